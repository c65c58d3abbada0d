"""The run's records in ``metrics.jsonl`` (one JSON object per line: a round, an evaluation),
read back by the round loop on resume and by ``step-coord status``. Light on purpose: the
admin CLI imports it without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def parse_record(line: str) -> dict[str, Any] | None:
    """A metrics line as a record; None for a blank line or one torn by a crash mid-append."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [r for r in map(parse_record, lines) if r is not None]


def latest_epsilons(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each local-DP node's latest epsilon spent, from round records in order."""
    epsilon: dict[str, float] = {}
    for r in records:
        epsilon.update(r.get("epsilon", {}))
    return epsilon
