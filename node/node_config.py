"""``node.yaml``: a deployed node's own settings, written by ``step-node init``.

Relative paths are taken from the folder of node.yaml, so the node folder can move. The
coordinator never sees or sets any of this: the SuperNode passes only the path of node.yaml to
the ClientApp (``--node-config node-file=...``).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from node.privacy_config import privacy_from_dict
from node.settings import _LANG_RE, _NAME_RE, WHOLE, NodeSettings
from step_common.errors import StepError
from step_common.fileio import atomic_write_text, read_yaml

NODE_FILE = "node.yaml"
NODE_CONFIG_KEY = "node-file"
"""The SuperNode's node-config key that carries the absolute path of node.yaml."""
CONSOLE_PREFIX = "step-node: "
"""A ClientApp's line for the operator's console (step-node start shows it, without this)."""


@dataclass(frozen=True)
class NodeFile:
    path: Path
    name: str
    coordinator: str
    """HOST:PORT of the coordinator's Fleet API."""
    ca: Path
    settings: NodeSettings
    threads: int
    """torch threads for training (0: all cores of the machine)."""
    max_backoff_s: float
    """Longest wait between reconnection attempts when the coordinator is unreachable."""
    federation_key: Path | None
    """The federation's public signing key: the SuperNode runs only apps signed with it."""

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def private_key(self) -> Path:
        assert self.settings.key is not None
        return self.settings.key


TEMPLATE = """\
# STEP node "{name}": written by `step-node init`. Relative paths start at this file's folder.
name: {name}
coordinator: "{coordinator}"   # the coordinator's address (HOST:PORT), from its admin
ca: ca.crt                      # the federation's CA certificate, from the coordinator admin
federation_key: federation.pub  # the federation's signing key: only apps it signed run here
data: {data}                    # a STEP-35 corpus folder, or a folder of .txt / .jsonl files
languages: null                 # null: every language in data; or a list, e.g. [de, fr]
state_dir: state                # inner optimizer state and data position between rounds
holdout_fraction: 0.05          # share of paragraphs held out for evaluation (no valid/ split)
encoding: null                  # encoding of your .txt/.jsonl files: null (UTF-8) or e.g. cp1253
privacy: null                   # local DP, e.g. {{epsilon: 8, delta: 1.0e-6, rounds: 20}}
resources:
  device: auto                  # auto: a CUDA GPU when one is visible, else cpu; or cpu, cuda
  threads: 0                    # CPU threads for training (0: all cores)
  max_backoff_s: 60             # longest wait between reconnection attempts
"""


def write_node_file(folder: Path, name: str, coordinator: str, data: str) -> Path:
    path = folder / NODE_FILE
    atomic_write_text(path, TEMPLATE.format(name=name, coordinator=coordinator, data=data))
    load_node_file(path)  # what init writes must load
    return path


def check_address(address: str, where: str) -> str:
    if "://" in address:
        raise StepError(
            f"{where} {address!r} has a scheme: give HOST:PORT only, e.g. coord.example.eu:9092 "
            "(the connection is always gRPC over TLS)"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StepError(f"{where} {address!r} must be HOST:PORT, e.g. coord.example.eu:9092")
    return address


def load_node_file(path: Path) -> NodeFile:
    path = Path(path).resolve()
    data = read_yaml(path, "run `step-node init DIR ...` first, or pass --dir DIR")
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected the settings written by `step-node init`")
    known = {"name", "coordinator", "ca", "federation_key", "data", "languages", "state_dir",
             "holdout_fraction", "encoding", "resources", "privacy"}  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise StepError(f"{path}: unknown keys {unknown}; allowed: {sorted(known)}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StepError(f"{path}: name {name!r} must be letters, digits, '-', '_' or '.'")
    coordinator = check_address(str(data.get("coordinator", "")), f"{path}: coordinator")
    folder = path.parent
    ca = folder / str(data.get("ca") or "ca.crt")
    federation_key = folder / str(data["federation_key"]) if data.get("federation_key") else None
    if data.get("data") in (None, ""):
        raise StepError(f"{path}: 'data' must name the folder with this institution's text")
    text_dir = folder / str(data["data"])
    languages = _languages(data.get("languages"), path)
    holdout = data.get("holdout_fraction", 0.05)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise StepError(f"{path}: holdout_fraction {holdout!r} must be in (0, 1)")
    resources = _mapping(data.get("resources"), path, "resources")
    threads = resources.get("threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise StepError(f"{path}: resources.threads {threads!r} must be 0 (all) or more")
    device = _device(resources.get("device", "auto"), path)
    backoff = resources.get("max_backoff_s", 60)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff <= 0:
        raise StepError(f"{path}: resources.max_backoff_s {backoff!r} must be > 0")
    settings = NodeSettings(
        name,
        text_dir,
        languages,
        folder / str(data.get("state_dir") or "state"),
        float(holdout),
        privacy_from_dict(data.get("privacy"), str(path)),
        device,
        _encoding(data.get("encoding"), path),
        folder / "node.key",
    )
    return NodeFile(path, name, coordinator, ca, settings, threads, float(backoff), federation_key)


def _encoding(value: Any, path: Path) -> str | None:
    if value is None:
        return None
    try:
        return codecs.lookup(str(value)).name
    except LookupError:
        raise StepError(
            f"{path}: encoding {value!r} is not a known text encoding: use null (UTF-8) or a "
            "name like cp1253, iso-8859-7, cp1251, koi8-r, utf-16"
        ) from None


def _device(value: Any, path: Path) -> str:
    if value not in ("auto", "cpu", "cuda"):
        raise StepError(f"{path}: resources.device {value!r} must be auto, cpu or cuda")
    if value == "cuda" and not torch.cuda.is_available():
        raise StepError(
            f"{path}: resources.device is cuda but no CUDA GPU is visible to this process: "
            "check the driver and CUDA_VISIBLE_DEVICES, or set it to auto or cpu"
        )
    return str(value)


def _mapping(value: Any, path: Path, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StepError(f"{path}: {key} must be a mapping")
    return value


def _languages(value: Any, path: Path) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise StepError(f"{path}: languages must be null (all) or a list of codes, e.g. [de, fr]")
    for lang in value:
        if not isinstance(lang, str) or not _LANG_RE.match(lang):
            raise StepError(f"{path}: languages: {lang!r} is not a language code like 'de'")
    return dict.fromkeys(value, WHOLE)
