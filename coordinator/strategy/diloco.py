"""DiLoCo's outer optimizer: SGD with Nesterov momentum on the pseudo-gradient.

Douillard et al. 2023 (DiLoCo) and INTELLECT-1 use lr 0.7, momentum 0.9. Same update as
``torch.optim.SGD(nesterov=True, dampening=0)``, written out so the state is plain tensors:

    b <- mu * b + delta            (b = delta on the first step)
    theta <- theta - lr * (delta + mu * b)

``row_lr`` (config ``outer_lr_rows``) replaces ``lr`` for the token rows: the input embedding
and the output head, whose rows the coordinator averages per token (fold.py), want a larger
step than the body in the non-IID default (bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import torch

from coordinator.strategy.base import Strategy, Weights
from coordinator.strategy.fold import TOKEN_ROWS


class DiLoCo(Strategy):
    name = "diloco"

    def __init__(self, lr: float = 0.7, momentum: float = 0.9, row_lr: float = 0.0) -> None:
        self.lr, self.momentum = lr, momentum
        self.row_lr = row_lr or lr  # 0: the token rows step like every other tensor
        self.buffers: Weights = {}

    def step(self, weights: Weights, delta: Weights) -> Weights:
        """In place: ``weights`` is the round loop's own copy, and a second one would be one
        more model's worth of memory at the coordinator's peak (same arithmetic: ``w.sub_(x)``
        gives the bits of ``w - x``)."""
        for k, w in weights.items():
            d = delta[k]
            b = self.buffers.get(k)
            b = d.clone() if b is None else b.mul_(self.momentum).add_(d)
            self.buffers[k] = b
            lr = self.row_lr if k in TOKEN_ROWS else self.lr
            w.sub_(lr * (d + self.momentum * b))
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr, "row_lr": self.row_lr, "momentum": self.momentum,
            "buffers": dict(self.buffers),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffers = {k: torch.as_tensor(v).clone() for k, v in state.get("buffers", {}).items()}
