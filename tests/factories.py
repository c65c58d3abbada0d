"""Objects tests build often, with defaults that hold unless a test says otherwise."""

from __future__ import annotations

from typing import Any

from step_fed.protocol import RoundConfig


def round_config(**overrides: Any) -> RoundConfig:
    """A valid round config of a small run (5 rounds of 2 inner steps, batch 2 x 8 tokens);
    ``overrides`` set any field."""
    fields: dict[str, Any] = {
        "round": 1,
        "total_rounds": 5,
        "inner_steps": 2,
        "inner_lr": 1e-3,
        "min_lr_ratio": 0.1,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "beta1": 0.9,
        "beta2": 0.95,
        "grad_clip": 1.0,
        "batch_size": 2,
        "seq_len": 8,
        "alpha": 0.3,
        "seed": 0,
        "update_encoding": "fp32",
        "model_json": "{}",
        "tokenizer": "",
        "tokenizer_sha256": "",
    }
    return RoundConfig(**{**fields, **overrides})
