"""The node's round journal: totals of the last run it took part in, a torn line skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.round_journal import JOURNAL, journal_summary, record_round


def _round(run_id: int, round_: int, wall_s: float, epsilon: float | None) -> dict[str, Any]:
    return {"run_id": run_id, "round": round_, "total_rounds": 5, "steps": 4, "tokens": 1000,
            "bytes_received": 2_000_000, "bytes_sent": 500_000, "wall_s": wall_s, "loss": 3.0,
            "epsilon": epsilon}  # fmt: skip


def test_the_summary_covers_the_last_run(tmp_path: Path) -> None:
    assert journal_summary(tmp_path)["rounds_trained"] == 0
    record_round(tmp_path, _round(1, 1, 99.0, 0.5))  # an earlier run
    record_round(tmp_path, _round(2, 1, 10.0, 0.3))
    record_round(tmp_path, _round(2, 2, 30.0, 0.45))
    with (tmp_path / JOURNAL).open("a") as f:
        f.write('{"run_id": 2, "round": 3, "tot')  # a crash mid-append
    s = journal_summary(tmp_path)
    assert s["rounds_trained"] == 3 and s["runs"] == [1, 2]
    assert (s["run_id"], s["run_rounds"], s["last_round"], s["total_rounds"]) == (2, 2, 2, 5)
    assert (s["bytes_received"], s["bytes_sent"], s["tokens"]) == (4_000_000, 1_000_000, 2000)
    assert s["mean_round_s"] == 20.0 and s["epsilon"] == 0.45
    assert [e["round"] for e in s["last_rounds"]] == [1, 2]


def test_a_node_without_local_dp_reports_no_epsilon(tmp_path: Path) -> None:
    record_round(tmp_path, _round(1, 1, 5.0, None))
    assert journal_summary(tmp_path)["epsilon"] is None
