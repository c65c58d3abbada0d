"""The checkpoint format: a folder anyone can inspect and verify with ``sha256sum -c``.

    config.json          model config (ModelConfig fields) + format version
    model.safetensors    weights, Hugging Face Llama names
    tokenizer.json       the tokenizer (tokenizer.py)
    state.json           JSON-able training state (step, metrics history, run settings ...)
    optimizer.safetensors + optimizer.json   optional: an optimizer state_dict, tensors + skeleton
    SHA256SUMS           sha256 of every other file, in ``sha256sum`` format

Writing goes through a temporary folder renamed into place (never half a checkpoint); loading
verifies every hash first and refuses a tampered, truncated or incomplete checkpoint. No pickle
anywhere: loading a checkpoint never runs code.

A *run folder* holds ``checkpoints/<name>/`` folders and a ``LATEST`` file naming the newest;
``resolve_checkpoint`` accepts either a checkpoint folder or a run folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_text, remove_tree, sha256_file
from step_model.config import ModelConfig
from step_model.model import Transformer
from step_model.tokenizer import Tokenizer, tokenizer_from_json

FORMAT = "step-checkpoint-v1"
SUMS = "SHA256SUMS"
LATEST = "LATEST"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "state.json")


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    state: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None


# --- optimizer state dicts <-> (JSON skeleton, flat tensors) ----------------------------------
# torch optimizer state dicts are nested dicts/lists/tuples with int keys and tensor leaves.
# JSON cannot keep int keys or tuples, so containers are tagged.


def pack_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[k, pack_tree(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unpack_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unpack_tree(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(unpack_tree(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"unknown tagged object {sorted(obj)}")
    if isinstance(obj, list):
        return [unpack_tree(v, tensors) for v in obj]
    return obj


def write_tree(folder: Path, stem: str, tree: Any) -> None:
    """``stem.safetensors`` (the tensors) + ``stem.json`` (the skeleton) in ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack_tree(tree, tensors)
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    atomic_write_text(folder / f"{stem}.json", json.dumps(skeleton))


def read_tree(folder: Path, stem: str) -> Any:
    skeleton = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
    return unpack_tree(skeleton, load_file(str(folder / f"{stem}.safetensors")))


class TensorFile(Mapping[str, torch.Tensor]):
    """The tensors of a safetensors file, each read from disk when asked for: a holder of a
    file the size of a model keeps in memory only the tensor it is using. ``names`` maps the
    names it answers to onto the names in the file (default: the file's own)."""

    def __init__(self, path: Path, names: dict[str, str] | None = None) -> None:
        self.path = path
        if names is None:
            with safe_open(str(path), framework="pt") as f:
                names = {k: k for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        self.names = names

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(str(self.path), framework="pt") as f:
            tensor: torch.Tensor = f.get_tensor(self.names[name])
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def open_tensor_dict(folder: Path, stem: str) -> TensorFile:
    """A ``write_tree`` of a flat {name: tensor} dict, read tensor by tensor (``TensorFile``)."""
    skeleton = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
    entries = skeleton.get("__dict__") if isinstance(skeleton, dict) else None
    if entries is None or not all(isinstance(v, dict) and "__tensor__" in v for _, v in entries):
        raise ValueError(f"{folder / stem}.json is not a flat dict of tensors")
    return TensorFile(folder / f"{stem}.safetensors", {k: v["__tensor__"] for k, v in entries})


def write_sums(folder: Path) -> None:
    """SHA256SUMS over every other file of ``folder`` and its subfolders (``sha256sum -c``
    format, paths relative to ``folder``)."""
    found = (p for p in folder.rglob("*") if p.is_file() and p.name != SUMS)
    files = sorted(p.relative_to(folder).as_posix() for p in found)
    atomic_write_text(folder / SUMS, "".join(f"{sha256_file(folder / n)}  {n}\n" for n in files))


# --- writing ------------------------------------------------------------------------------------


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to the new folder ``path`` atomically (``path`` must not exist)."""
    path = Path(path)
    if path.exists():
        raise StepError(f"checkpoint folder {path} already exists: remove it or choose another")
    with atomic_directory(path) as tmp:
        config = {"format": FORMAT, "model": ckpt.config.to_dict()}
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=1, sort_keys=True))
        weights = {k: v.detach().cpu().contiguous() for k, v in ckpt.weights.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        atomic_write_text(tmp / "tokenizer.json", ckpt.tokenizer.to_json())
        atomic_write_text(tmp / "state.json", json.dumps(ckpt.state, indent=1, sort_keys=True))
        if ckpt.optimizer is not None:
            write_tree(tmp, "optimizer", ckpt.optimizer)
        write_sums(tmp)


def save_in_run(run_dir: Path, name: str, ckpt: Checkpoint, keep: int = 2) -> Path:
    """Save ``run_dir/checkpoints/name``, point LATEST at it, keep the ``keep`` newest."""
    ckpt_dir = Path(run_dir) / "checkpoints" / name
    if ckpt_dir.exists():  # a previous attempt of this very step: replace it
        remove_tree(ckpt_dir)
    save_checkpoint(ckpt_dir, ckpt)
    atomic_write_text(Path(run_dir) / LATEST, f"checkpoints/{name}\n")
    older = sorted(
        p for p in ckpt_dir.parent.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    for old in older[: max(0, len(older) - keep)]:
        if old != ckpt_dir:
            remove_tree(old)
    return ckpt_dir


# --- reading ------------------------------------------------------------------------------------


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the one a run folder's LATEST names."""
    path = Path(path)
    if (path / SUMS).is_file() or (path / "config.json").is_file():
        return path
    latest = path / LATEST
    if latest.is_file():
        target = path / latest.read_text(encoding="utf-8").strip()
        if not target.is_dir():
            raise StepError(
                f"{latest} names {target}, which does not exist: the run folder is "
                "damaged; pass a checkpoint folder under checkpoints/ instead"
            )
        return target
    raise StepError(
        f"{path} is neither a checkpoint folder (no {SUMS}) nor a run folder (no "
        f"{LATEST}): pass the --out folder of a training run or one of its checkpoints"
    )


def verify_checkpoint(path: Path, required: tuple[str, ...] = REQUIRED) -> None:
    """Raise StepError unless every file listed in SHA256SUMS is present and unchanged."""
    sums = path / SUMS
    if not sums.is_file():
        raise StepError(f"{path} has no {SUMS}: it is not a complete checkpoint; re-save it")
    listed = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name in required:
        if name not in listed:
            raise StepError(f"{path}/{SUMS} does not list {name}: the checkpoint is incomplete")
    for name, digest in listed.items():
        f = path / name
        if not f.is_file():
            raise StepError(f"checkpoint file {f} is missing: restore it or use another checkpoint")
        if sha256_file(f) != digest:
            raise StepError(
                f"checkpoint file {f} does not match its sha256 in {SUMS} (tampered "
                "or truncated): restore it from a good copy or use another checkpoint"
            )


def load_checkpoint(path: Path, with_optimizer: bool = True) -> Checkpoint:
    """Load and verify a checkpoint (a checkpoint folder or a run folder)."""
    path = resolve_checkpoint(path)
    verify_checkpoint(path)
    meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise StepError(
            f"{path}/config.json has format {meta.get('format')!r}, expected {FORMAT!r}: "
            "this checkpoint was written by another version of step-federated"
        )
    config = ModelConfig.from_dict(meta["model"], source=f"{path}/config.json")
    weights = load_file(str(path / "model.safetensors"))
    tokenizer = tokenizer_from_json(
        (path / "tokenizer.json").read_text(encoding="utf-8"), source=f"{path}/tokenizer.json"
    )
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    optimizer = None
    if with_optimizer and (path / "optimizer.json").is_file():
        optimizer = read_tree(path, "optimizer")
    return Checkpoint(config, weights, tokenizer, state, optimizer)


def seeded_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """A fresh model's weights drawn with ``seed``: the same bits wherever the same torch
    draws them (a node builds a run's first weights this way instead of downloading them)."""
    torch.manual_seed(seed)
    return dict(Transformer(config).state_dict())


def initial_weights(
    config: ModelConfig, tokenizer: Tokenizer, seed: int, init_from: str = ""
) -> dict[str, torch.Tensor]:
    """The weights a run starts from: a fresh model drawn with ``seed``, or (``init_from``) a
    checkpoint's, which must hold the same model and tokenizer (a warm start: e.g. open data
    trained centrally, private data federated)."""
    if not init_from:
        return seeded_weights(config, seed)
    if not Path(init_from).exists():
        raise StepError(
            f"init_from {init_from} does not exist: give the --out folder of a `step-model "
            "train` run, or one of its checkpoints"
        )
    ckpt = load_checkpoint(Path(init_from), with_optimizer=False)
    if ckpt.config != config:
        diff = sorted(k for k, v in config.to_dict().items() if ckpt.config.to_dict().get(k) != v)
        raise StepError(
            f"init_from {init_from}: its model differs from this run's in {diff}: use the preset "
            "and tokenizer the checkpoint was trained with"
        )
    if ckpt.tokenizer.to_json() != tokenizer.to_json():
        raise StepError(
            f"init_from {init_from}: its tokenizer differs from this run's: set the tokenizer "
            f"to {resolve_checkpoint(Path(init_from)) / 'tokenizer.json'}"
        )
    return {k: v.clone() for k, v in ckpt.weights.items()}
