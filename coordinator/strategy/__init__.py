"""Outer optimizers: how the aggregated pseudo-gradient becomes the next global model.

One algorithm per file; ``make_strategy`` picks one by the config's name.
"""

from __future__ import annotations

from coordinator.config import FederationConfig
from coordinator.strategy.base import Strategy
from coordinator.strategy.central_dp import CentralDP
from coordinator.strategy.diloco import DiLoCo
from coordinator.strategy.fedavg import FedAvg
from coordinator.strategy.robust import Aggregation


def make_strategy(cfg: FederationConfig) -> Strategy:
    inner: Strategy
    if cfg.strategy == "diloco":
        inner = DiLoCo(cfg.outer_lr, cfg.outer_momentum, cfg.outer_lr_rows)
    else:
        inner = FedAvg()
    inner.aggregation = Aggregation(
        cfg.aggregation, cfg.trim_fraction, cfg.aggregation_clip, cfg.filter_cosine
    )
    if cfg.central_dp_noise > 0:
        return CentralDP(inner, cfg.central_dp_noise, cfg.central_dp_clip, cfg.central_dp_delta)
    return inner


__all__ = ["Aggregation", "CentralDP", "DiLoCo", "FedAvg", "Strategy", "make_strategy"]
