"""``node.yaml``: a node's own settings, written by ``step-node init`` (or, for each virtual
institution, by ``step-sim``).

Relative paths are taken from the folder of node.yaml, so the node folder can move. The
coordinator never sees or sets any of this: the SuperNode passes only the path of node.yaml to
the ClientApp (``--node-config node-file=...``). The file is a pydantic model (``NodeYaml``):
unknown keys, wrong types and values out of range are one-line errors naming the key.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, Field, field_validator, model_validator

from node.privacy_config import PrivacyConfig
from node.settings import WHOLE, LanguageSlice, NodeSettings
from step_common.errors import StepError
from step_common.fileio import atomic_write_text, read_yaml
from step_common.typed_config import STRICT, LangCode, Name, YamlFloat, parse_section

NODE_FILE = "node.yaml"
NODE_CONFIG_KEY = "node-file"
"""The SuperNode's node-config key that carries the absolute path of node.yaml."""
CONSOLE_PREFIX = "step-node: "
"""A ClientApp's line for the operator's console (step-node start shows it, without this)."""

Range = Annotated[tuple[YamlFloat, YamlFloat], Field(strict=False)]  # YAML gives a list


class LanguagePart(BaseModel):
    """Fractions [lo, hi) of a language's paragraphs: of its train/ text and of its valid/."""

    model_config = STRICT
    train: Range
    valid: Range

    @field_validator("train", "valid")
    @classmethod
    def _in_unit_interval(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 1:
            raise ValueError("must be [lo, hi] with 0 <= lo < hi <= 1")
        return value


class Resources(BaseModel):
    model_config = STRICT
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: a CUDA GPU when one is visible, else cpu."""
    gpus: int = Field(default=1, ge=1)
    """Training workers on this host, one per GPU (torchrun + FSDP2, node/worker_group.py); on
    a CPU-only node (device: cpu) that many CPU processes (gloo). 1: one device, no workers."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Of the workers' compute (gpus > 1): bf16 keeps fp32 weights, gradients reduced in fp32
    and fp32 AdamW state; auto: bf16 on GPUs, fp32 on the CPU."""
    activation_checkpointing: bool = False
    """Workers (gpus > 1) recompute each block's activations in the backward pass instead of
    keeping them: less memory for about a third more compute."""
    sharding: Literal["auto", "full_shard", "replicate"] = "auto"
    """Workers (gpus > 1): full_shard (FSDP2: each holds 1/gpus of the weights, gradients and
    AdamW state), replicate (each holds the whole model, gradients averaged: DDP's arithmetic,
    faster where it fits), auto: replicate when the memory plan fits a device."""
    hosts: int = Field(default=1, ge=1)
    """Hosts of this institution whose workers train together (``gpus`` on each): torchrun's
    c10d rendezvous; the node folder (state_dir and data) must be on a filesystem every host
    shares. `step-node start` runs on one host, `step-node workers` on each other."""
    rendezvous: str | None = None
    """hosts > 1: HOST:PORT where the hosts' torchrun agents meet (a free port on one of them,
    reachable from all)."""
    threads: int = Field(default=0, ge=0)
    """CPU threads for training (0: all cores)."""
    max_backoff_s: YamlFloat = Field(default=60.0, gt=0)
    """Longest wait between reconnection attempts when the coordinator is unreachable."""


class NodeYaml(BaseModel):
    """What node.yaml may hold (see TEMPLATE for the commented file init writes)."""

    model_config = STRICT
    name: Name
    """The institution's name, as the coordinator admin enrolled it."""
    coordinator: str | None = None
    """HOST:PORT of the coordinator's Fleet API (a simulated node has none)."""
    ca: str = "ca.crt"
    """The federation's CA certificate."""
    federation_key: str | None = None
    """The federation's public signing key: the SuperNode runs only apps signed with it, and
    the node trusts only a roster of identity keys it signed (secure aggregation)."""
    key: str | None = None
    """The node's private key; null: node.key beside this file (a deployed node), none (a
    simulated node: step-sim writes one per institution when secure aggregation is on)."""
    data: str = Field(min_length=1)
    """A STEP-35 corpus folder, or a folder of .txt / .jsonl files."""
    languages: Annotated[list[LangCode], Field(min_length=1)] | None = None
    """null: every language in data; or a list of codes, e.g. [de, fr]."""
    language_parts: dict[LangCode, LanguagePart] | None = None
    """Instead of languages: a part of each language's paragraphs (step-sim gives its virtual
    institutions disjoint parts of one corpus this way)."""
    state_dir: str = "state"
    """Inner optimizer state and data position between rounds."""
    holdout_fraction: YamlFloat = Field(default=0.05, gt=0, lt=1)
    """Share of paragraphs held out for evaluation when data has no valid/ split."""
    encoding: str | None = None
    """Encoding of the node's own .txt/.jsonl files: null (UTF-8) or e.g. cp1253."""
    privacy: PrivacyConfig | None = None
    """Local DP (node/privacy_config.py); null: none."""
    resources: Resources = Resources()

    @field_validator("coordinator")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value, "")

    @field_validator("languages", mode="before")
    @classmethod
    def _a_list(cls, value: object) -> object:
        if value is not None and not isinstance(value, list):
            raise ValueError("must be null (all) or a list of codes, e.g. [de, fr]")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(
                "not a known text encoding: use null (UTF-8) or a name like cp1253, "
                "iso-8859-7, cp1251, koi8-r, utf-16"
            ) from None

    @model_validator(mode="after")
    def _one_language_list(self) -> NodeYaml:
        if self.languages is not None and self.language_parts is not None:
            raise ValueError("give languages or language_parts, not both")
        return self


@dataclass(frozen=True)
class NodeFile:
    path: Path
    name: str
    coordinator: str
    """HOST:PORT of the coordinator's Fleet API ('' for a simulated node)."""
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
  gpus: 1                       # >1: that many torchrun workers (FSDP2), one per GPU
  precision: auto               # workers' compute: auto (bf16 on GPUs), fp32 or bf16
  activation_checkpointing: false  # workers recompute activations: less memory, more compute
  sharding: auto                # workers: full_shard (FSDP2), replicate, auto (replicate: fits)
  hosts: 1                      # >1: workers on that many hosts (gpus each), node folder shared
  rendezvous: null              # hosts > 1: HOST:PORT where the hosts' torchrun agents meet
  threads: 0                    # CPU threads for training (0: all cores)
  max_backoff_s: 60             # longest wait between reconnection attempts
"""


def write_node_file(folder: Path, name: str, coordinator: str, data: str) -> Path:
    path = folder / NODE_FILE
    atomic_write_text(path, TEMPLATE.format(name=name, coordinator=coordinator, data=data))
    load_node_file(path)  # what init writes must load
    return path


def check_address(address: str, where: str) -> str:
    """``address`` when it is HOST:PORT; a ValueError naming ``where`` otherwise."""
    prefix = f"{where} {address!r} " if where else ""
    if "://" in address:
        raise ValueError(
            f"{prefix}has a scheme: give HOST:PORT only, e.g. coord.example.eu:9092 "
            "(the connection is always gRPC over TLS)"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{prefix}must be HOST:PORT, e.g. coord.example.eu:9092")
    return address


def load_node_file(path: Path, simulated: bool = False) -> NodeFile:
    """node.yaml, checked. A deployed node's must name its coordinator and has a key
    (``node.key`` next to it); a simulated node (step-sim's) has neither."""
    path = Path(path).resolve()
    data = read_yaml(path, "run `step-node init DIR ...` first, or pass --dir DIR")
    doc = parse_section(NodeYaml, data, str(path))
    if doc.coordinator is None and not simulated:
        raise StepError(
            f"{path}: coordinator is missing: add `coordinator: HOST:PORT` (the coordinator's "
            "address, from its admin)"
        )
    if doc.resources.device == "cuda" and not torch.cuda.is_available():
        raise StepError(
            f"{path}: resources.device is cuda but no CUDA GPU is visible to this process: "
            "check the driver and CUDA_VISIBLE_DEVICES, or set it to auto or cpu"
        )
    _check_workers(doc, path)
    folder = path.parent
    return NodeFile(
        path,
        doc.name,
        doc.coordinator or "",
        folder / doc.ca,
        node_settings_of(doc, folder, _key_file(doc, folder, simulated)),
        doc.resources.threads,
        doc.resources.max_backoff_s,
        folder / doc.federation_key if doc.federation_key else None,
    )


def _key_file(doc: NodeYaml, folder: Path, simulated: bool) -> Path | None:
    if doc.key is not None:
        return folder / doc.key
    return None if simulated else folder / "node.key"


def _check_workers(doc: NodeYaml, path: Path) -> None:
    """What torchrun workers cannot do, and GPUs that are not there, refused up front."""
    gpus, hosts, rendezvous = doc.resources.gpus, doc.resources.hosts, doc.resources.rendezvous
    if hosts > 1 and not _host_port(rendezvous):
        raise StepError(
            f"{path}: resources.hosts is {hosts}: set resources.rendezvous to HOST:PORT, a free "
            "port on one of the hosts that every host can reach (torchrun's c10d rendezvous)"
        )
    if hosts == 1 and rendezvous is not None:
        raise StepError(
            f"{path}: resources.rendezvous applies to workers on several hosts: remove it or "
            "set resources.hosts"
        )
    if gpus * hosts == 1:
        res = doc.resources
        if res.precision != "auto" or res.activation_checkpointing or res.sharding != "auto":
            raise StepError(
                f"{path}: resources.precision, activation_checkpointing and sharding apply to "
                "torchrun workers (resources.gpus > 1); one device trains in bf16 on a GPU and "
                "fp32 on the CPU: remove them or raise gpus"
            )
        return
    if doc.privacy is not None and doc.privacy.mode != "ghost":
        raise StepError(
            f"{path}: privacy.mode {doc.privacy.mode} does not run on torchrun workers (Opacus "
            "has no FSDP form of per-sample gradients): set privacy.mode: ghost, or "
            "resources.gpus: 1"
        )
    if doc.privacy is not None and doc.resources.activation_checkpointing:
        raise StepError(
            f"{path}: DP-SGD on torchrun workers cannot recompute activations (Opacus' ghost "
            "clipping would see each block's forward twice): set "
            "resources.activation_checkpointing: false"
        )
    if doc.privacy is not None and doc.resources.precision == "bf16":
        raise StepError(
            f"{path}: DP-SGD on torchrun workers computes in fp32 (ghost clipping's norms and "
            "the gradients they clip must round alike): set resources.precision: auto"
        )
    cuda = doc.resources.device == "cuda" or (
        doc.resources.device == "auto" and torch.cuda.is_available()
    )
    if cuda and torch.cuda.device_count() < gpus:
        raise StepError(
            f"{path}: resources.gpus is {gpus} but this host has {torch.cuda.device_count()} "
            "CUDA GPUs visible: lower gpus, or check CUDA_VISIBLE_DEVICES"
        )


def _host_port(value: str | None) -> bool:
    host, _, port = (value or "").rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def node_settings_of(doc: NodeYaml, folder: Path, key: Path | None) -> NodeSettings:
    """The settings a node.yaml in ``folder`` gives (its relative paths start there)."""
    return NodeSettings(
        doc.name,
        folder / doc.data,
        _slices(doc),
        folder / doc.state_dir,
        doc.holdout_fraction,
        doc.privacy,
        doc.resources.device,
        doc.encoding,
        key,
        doc.resources.gpus * doc.resources.hosts,
        doc.resources.precision,
        doc.resources.activation_checkpointing,
        doc.resources.sharding,
        doc.resources.hosts,
        doc.resources.rendezvous,
        folder / doc.federation_key if doc.federation_key else None,
    )


def _slices(doc: NodeYaml) -> dict[str, LanguageSlice] | None:
    if doc.language_parts is not None:
        return {lang: LanguageSlice(p.train, p.valid) for lang, p in doc.language_parts.items()}
    return dict.fromkeys(doc.languages, WHOLE) if doc.languages is not None else None
