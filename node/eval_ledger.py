"""The evaluations a node ran on its held-out text: one set of weights per round of a run.

The coordinator chooses the weights a node evaluates, and each evaluation answers a question
about the node's held-out text (per-language loss). Unbounded, a coordinator could send weights
of its own making as often as it likes and learn from the answers. So a node evaluates at most
one set of weights per round of a run, named by their content hash (``view_id``): asked again
for the same weights (a message sent again after the node restarted, a resumed coordinator) it
answers what it kept without evaluating again; asked for other weights it refuses.

``<state_dir>/evaluations.json`` keeps, per run, each round's content hash and result (written
atomically, under a lock): the operator can check that what the node evaluated is what the
federation published (the hash of a signed checkpoint's weights).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from step_common.errors import StepError
from step_common.fileio import atomic_write_text, file_lock

Result = dict[str, tuple[float, int]]
"""{language: (summed NLL in nats, bytes predicted)}"""
KEEP_RUNS = 5


class EvaluationRefused(StepError):
    """A second, different set of weights for a round already evaluated."""


class EvalLedger:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "evaluations.json"
        self.lock = Path(state_dir) / ".evaluations.lock"

    def evaluate(
        self, node: str, run_id: int, round_: int, weights: str, compute: Callable[[], Result]
    ) -> Result:
        """``compute()`` once per (run, round); the kept result for the same weights again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock):
            runs = self._load()
            rounds = runs.setdefault(str(run_id), {})
            done = rounds.get(str(round_))
            if done is not None:
                if done["weights"] == weights:
                    return {lang: (float(v[0]), int(v[1])) for lang, v in done["result"].items()}
                raise EvaluationRefused(
                    f"node {node} refuses to evaluate round {round_} of run {run_id} again on "
                    f"other weights ({weights[:16]}; it evaluated {done['weights'][:16]}): one "
                    "evaluation per round, so that held-out text cannot be probed"
                )
            result = compute()
            rounds[str(round_)] = {
                "weights": weights,
                "result": {lang: list(v) for lang, v in result.items()},
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for old in list(runs)[:-KEEP_RUNS]:
                del runs[old]
            atomic_write_text(self.path, json.dumps({"runs": runs}, indent=1) + "\n")
            return result

    def _load(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            runs: dict[str, dict[str, Any]] = json.loads(self.path.read_text("utf-8"))["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StepError(
                f"{self.path} is unreadable ({e}): restore it from a backup (it bounds how "
                "often the coordinator may evaluate on this node's held-out text)"
            ) from None
        return runs
