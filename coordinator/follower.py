"""What ``step-coord start`` does while the run goes on: print each committed round and
evaluation, audit the rounds (round_audit.py), and run the guard (guard.py), until the run is
finished."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from coordinator.control_client import RunInfo
from coordinator.guard import ControlGuard
from coordinator.round_audit import RoundAuditor
from step_common.errors import StepError
from step_common.round_progress import RoundProgress

POLL_S = 2.0
GUARD_PATIENCE = 15
"""Consecutive failed checks (of POLL_S each) before the Control API counts as gone: a busy
SuperLink may miss one answer, and the run should not end for that."""


class Follower:
    def __init__(
        self,
        guard: ControlGuard,
        auditor: RoundAuditor,
        resume: bool,
        out: Console,
        total_rounds: int,
    ) -> None:
        self.guard, self.auditor, self.out = guard, auditor, out
        self.metrics = guard.fed.run / "metrics.jsonl"
        # On --resume, rounds committed before are not news: print only what comes now (the
        # ServerApp first drops lines after its last checkpoint; those are never reprinted).
        self.printed = auditor.done if resume else 0
        self.progress = RoundProgress(out, total_rounds, self.printed)
        self.offset = 0
        self.failures = 0

    def follow(
        self, superlink: subprocess.Popen[bytes], run_id: int, log_path: Path
    ) -> tuple[str, str]:
        """(status, details) once the run is finished."""
        with self.progress:
            return self._follow(superlink, run_id, log_path)

    def _follow(
        self, superlink: subprocess.Popen[bytes], run_id: int, log_path: Path
    ) -> tuple[str, str]:
        while True:
            time.sleep(POLL_S)
            self._new_records()
            if superlink.poll() is not None:
                raise StepError(
                    f"the SuperLink stopped (exit code {superlink.returncode}): see {log_path}"
                )
            ours = [r for r in self._check(log_path) if r.run_id == run_id]
            if ours and ours[0].status.startswith("finished"):
                self._new_records()
                return ours[0].status, ours[0].details

    def _check(self, log_path: Path) -> list[RunInfo]:
        try:
            runs = self.guard.check()
        except Exception as e:  # any transport error of Flower's client: retry, then give up
            self.failures += 1
            if self.failures >= GUARD_PATIENCE:
                raise StepError(
                    f"the SuperLink's Control API has not answered for "
                    f"{GUARD_PATIENCE * POLL_S:.0f} s ({e}): see {log_path}"
                ) from None
            return []
        self.failures = 0
        return runs

    def _new_records(self) -> None:
        if not self.metrics.exists():
            return
        if self.metrics.stat().st_size < self.offset:  # rewritten shorter by a resume
            self.offset = 0
        with self.metrics.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].decode("utf-8").splitlines():
            rec = json.loads(line)
            if int(rec.get("round", 0)) > self.printed:
                self._show(rec)
            self.auditor.record(rec)

    def _show(self, rec: dict[str, Any]) -> None:
        """A round moves the progress bar (with its line above it); an evaluation is a line."""
        if rec.get("kind") == "round":
            loss = "-" if rec["loss"] is None else f"{rec['loss']:.3f}"
            self.progress.advance(int(rec["round"]), f"loss {loss}", describe(rec))
            return
        self.out.print(describe(rec), markup=False)
        if rec.get("kind") == "eval" and rec.get("mean_bpb") is not None:
            self.progress.update(f"bpb {rec['mean_bpb']:.3f}")


def describe(rec: dict[str, Any]) -> str:
    if rec.get("kind") == "round":
        rejected = rec.get("rejected") or {}
        extra = f", rejected {sorted(rejected)}" if rejected else ""
        if rec.get("missing"):
            extra += f", no reply in time from {rec['missing']}"
        if rec.get("resent"):
            extra += f", sent again to {rec['resent']} (restarted mid-round)"
        if "epsilon_central" in rec:
            extra += f", central epsilon {rec['epsilon_central']:.3f}"
        loss = "-" if rec["loss"] is None else f"{rec['loss']:.3f}"  # None: only DP nodes
        return (f"round {rec['round']}: {rec['nodes']} nodes, loss {loss}, "
                f"{rec['wall_s']:.1f} s{extra}")  # fmt: skip
    if rec.get("kind") == "eval":
        return f"round {rec['round']}: mean bpb {rec['mean_bpb']:.3f}"
    return json.dumps(rec)
