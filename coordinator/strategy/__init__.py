"""Outer optimizers: how the aggregated pseudo-gradient becomes the next global model.

One algorithm per file; ``make_strategy`` picks one by the config's name.
"""

from __future__ import annotations

from coordinator.config import FederationConfig
from coordinator.strategy.base import Strategy
from coordinator.strategy.diloco import DiLoCo
from coordinator.strategy.fedavg import FedAvg


def make_strategy(cfg: FederationConfig) -> Strategy:
    if cfg.strategy == "diloco":
        return DiLoCo(lr=cfg.outer_lr, momentum=cfg.outer_momentum)
    return FedAvg()


__all__ = ["DiLoCo", "FedAvg", "Strategy", "make_strategy"]
