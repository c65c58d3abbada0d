"""The node's own account of the rounds it trained, for its operator (``step-node status``):
``<state_dir>/rounds.jsonl``, one line per trained round.

It stays on the node's machine. Under local DP the loss and the round's time never leave it
(client_app.train_metrics), but the operator may see them: they are the operator's own data.
The privacy ledger (ledger.py) stays the authority on epsilon; the journal repeats the spend
after each round so that one file answers "what has my node done".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from step_common.fileio import append_jsonl

JOURNAL = "rounds.jsonl"
SHOWN = 10
"""Rounds listed one by one in the status report (the totals cover all of them)."""


def record_round(state_dir: Path, entry: dict[str, Any]) -> None:
    """Append one trained round: run_id, round, total_rounds, steps, tokens, bytes_received,
    bytes_sent, wall_s, loss, epsilon (None when local DP is off)."""
    append_jsonl(state_dir / JOURNAL, {**entry, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def read_journal(state_dir: Path) -> list[dict[str, Any]]:
    """Every complete line (a line torn by a crash mid-append is skipped)."""
    try:
        text = (state_dir / JOURNAL).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def journal_summary(state_dir: Path) -> dict[str, Any]:
    """Rounds trained, bytes both ways, mean time per round and epsilon, for the last run the
    node took part in and over all runs; the last rounds one by one."""
    entries = read_journal(state_dir)
    if not entries:
        return {"rounds_trained": 0, "runs": [], "last_rounds": []}
    last_run = entries[-1].get("run_id")
    this_run = [e for e in entries if e.get("run_id") == last_run]
    times = [float(e["wall_s"]) for e in this_run]
    eps = [e["epsilon"] for e in this_run if e.get("epsilon") is not None]
    return {
        "rounds_trained": len(entries),
        "runs": sorted({e.get("run_id") for e in entries}, key=str),
        "run_id": last_run,
        "run_rounds": len(this_run),
        "last_round": this_run[-1]["round"],
        "total_rounds": this_run[-1]["total_rounds"],
        "bytes_received": sum(int(e["bytes_received"]) for e in this_run),
        "bytes_sent": sum(int(e["bytes_sent"]) for e in this_run),
        "tokens": sum(int(e["tokens"]) for e in this_run),
        "mean_round_s": sum(times) / len(times),
        "epsilon": eps[-1] if eps else None,
        "last_rounds": this_run[-SHOWN:],
    }
