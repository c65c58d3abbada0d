"""A node evaluates one set of weights per round of a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.eval_ledger import EvalLedger, EvaluationRefused
from step_common.errors import StepError


def test_one_evaluation_per_round_and_the_kept_answer_for_the_same_weights(
    tmp_path: Path,
) -> None:
    calls: list[int] = []

    def compute() -> dict[str, tuple[float, int]]:
        calls.append(1)
        return {"el": (12.5, 40)}

    ledger = EvalLedger(tmp_path)
    assert ledger.evaluate("uni", 7, 3, "aaaa", compute) == {"el": (12.5, 40)}
    assert EvalLedger(tmp_path).evaluate("uni", 7, 3, "aaaa", compute) == {"el": (12.5, 40)}
    assert len(calls) == 1  # the second answer was the kept one
    with pytest.raises(EvaluationRefused, match="refuses to evaluate round 3 of run 7 again"):
        ledger.evaluate("uni", 7, 3, "bbbb", compute)
    ledger.evaluate("uni", 7, 4, "bbbb", compute)  # the next round
    ledger.evaluate("uni", 8, 3, "bbbb", compute)  # another run (a new signed launch)
    assert len(calls) == 3


def test_a_damaged_record_stops_evaluation(tmp_path: Path) -> None:
    (tmp_path / "evaluations.json").write_text("{not json")
    with pytest.raises(StepError, match="unreadable"):
        EvalLedger(tmp_path).evaluate("uni", 1, 1, "aaaa", lambda: {})
