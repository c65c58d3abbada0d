"""A run folder: where a training run commits its progress and continues after a crash.

    LATEST               names the newest checkpoint (checkpoint.py)
    checkpoints/<unit>-NNN/   the newest ``keep`` checkpoints
    metrics.jsonl        one JSON record per line, each tagged with the step or round it follows
    summary.json         written when the run ends

Shared by the centralized trainer (``unit="step"``) and the federated round loop
(``unit="round"``): both commit a checkpoint whose ``state.json`` holds the counter under the
name ``unit``, and both tag their metrics records with it. A crash can leave three things behind,
each handled here: records logged after the last commit (dropped on resume: they will be redone,
and would otherwise appear twice), a last line torn mid-append (dropped with them), and the
temporaries of an interrupted atomic write (removed by ``prepare``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from step_common.errors import StepError
from step_common.fileio import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
)
from step_model.checkpoint import LATEST, Checkpoint, load_checkpoint, save_in_run

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class RunFolder:
    path: Path
    unit: str
    """The counter a checkpoint is committed at: 'step' or 'round' (a key of its state.json
    and of every metrics record, and the prefix of its folder name)."""
    digits: int
    """Zero-padding of the counter in checkpoint names, so that names sort as numbers."""
    keep: int = 2
    """How many of the newest checkpoints are kept."""

    @property
    def committed(self) -> bool:
        """Whether a checkpoint was ever committed here (LATEST names it)."""
        return (self.path / LATEST).exists()

    def check_start(self, resume: bool, *, occupied: str, empty: str) -> None:
        """StepError ``occupied`` when a new run would overwrite a committed one; StepError
        ``empty`` when a resume finds nothing committed (the callers word these: each names its
        own flags)."""
        if resume and not self.committed:
            raise StepError(empty)
        if not resume and self.committed:
            raise StepError(occupied)

    def prepare(self) -> list[Path]:
        """Create the folder and remove the temporaries a killed write left in it and in
        ``checkpoints/``; returns what was removed. Only while no other process writes here."""
        self.path.mkdir(parents=True, exist_ok=True)
        removed: list[Path] = []
        for folder in (self.path, self.path / "checkpoints"):
            removed += remove_stale_temps(folder)
        return removed

    def resume(self, check: Callable[[Checkpoint], None]) -> Checkpoint:
        """The latest checkpoint, verified; ``check`` (StepError when the checkpoint does not
        belong to this run's settings) runs before anything is changed. Then metrics.jsonl is
        cut back to the records of the committed ``unit``."""
        ckpt = load_checkpoint(self.path)
        check(ckpt)
        self.truncate_metrics(int(ckpt.state[self.unit]))
        return ckpt

    def truncate_metrics(self, upto: int) -> None:
        """Keep the records tagged ``unit <= upto`` (untagged ones count as 0), each line as
        written; drop later ones and any line that is not a JSON object (torn by a crash)."""
        path = self.path / METRICS
        if not path.exists():
            return
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if _counter(line, self.unit) <= upto
        ]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def save(self, ckpt: Checkpoint) -> Path:
        """Commit ``ckpt`` as ``checkpoints/<unit>-NNN`` (its state's counter), point LATEST at
        it and keep the ``keep`` newest."""
        name = f"{self.unit}-{int(ckpt.state[self.unit]):0{self.digits}d}"
        return save_in_run(self.path, name, ckpt, keep=self.keep)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (fsync'ed: a crash loses at most this line)."""
        append_jsonl(self.path / METRICS, record)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY, summary)


def _counter(line: str, unit: str) -> float:
    """The ``unit`` a metrics line is tagged with; +inf (never kept) for a blank line, a line
    torn mid-append or one that is not a JSON object with a number there."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return float("inf")
    if not isinstance(record, dict):
        return float("inf")
    value = record.get(unit, 0)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else float("inf")
