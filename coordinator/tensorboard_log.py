"""Live monitoring: the round records as TensorBoard scalars in ``<run>/tensorboard/``
(``tensorboard --logdir RUN``), written as each round commits.

Off without the ``monitor`` extra (tensorboard is not installed): one log line says how to
turn it on. metrics.jsonl stays the record; these files are a view of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("step.coordinator")
FOLDER = "tensorboard"


class _Writer(Protocol):
    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, by TensorBoard tag."""
    out: dict[str, float] = {}
    if record.get("kind") == "eval":
        if record.get("mean_bpb") is not None:
            out["bpb/mean"] = float(record["mean_bpb"])
        for lang, value in record.get("bpb", {}).items():
            out[f"bpb/{lang}"] = float(value)
        return out
    if record.get("kind") != "round":
        return out
    if record.get("loss") is not None:
        out["train/loss"] = float(record["loss"])
    wall = float(record.get("wall_s") or 0.0)
    if wall > 0:
        out["train/tokens_per_s"] = float(record.get("tokens", 0)) / wall
    out["round/wall_s"] = wall
    out["bytes/up"] = float(record.get("bytes_up", 0))
    out["bytes/down"] = float(record.get("bytes_down", 0))
    out["nodes/in_round"] = float(record.get("nodes", 0))
    for key in ("rejected", "missing", "dropped"):
        out[f"nodes/{key}"] = float(len(record.get(key) or []))
    for node, eps in (record.get("epsilon") or {}).items():
        out[f"privacy/epsilon/{node}"] = float(eps)
    if record.get("epsilon_central") is not None:
        out["privacy/epsilon_central"] = float(record["epsilon_central"])
    return out


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        self.writer: _Writer | None = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard files are off: `pip install -e '.[monitor]'` turns them on "
                     "(then `tensorboard --logdir %s`)", run_dir)  # fmt: skip
            return
        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER))

    def record(self, rec: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(rec.get("round", 0))
        for tag, value in scalars(rec).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
