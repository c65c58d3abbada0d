"""Test helpers for in-process federations (see step_sim/local_transport.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from step_sim.local_transport import LocalTransport

__all__ = ["LocalTransport", "write_sim_config"]


def write_sim_config(
    path: Path, corpus: Path, institutions: list[dict[str, Any]], **federation: Any
) -> Path:
    base = dict(
        preset="debug",
        tokenizer="byte",
        rounds=2,
        inner_steps=3,
        batch_size=2,
        seq_len=32,
        warmup_steps=1,
        eval_every=1,
        eval_max_tokens=64,
    )
    doc = {
        "corpus": str(corpus),
        "federation": {**base, **federation},
        "institutions": institutions,
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path
