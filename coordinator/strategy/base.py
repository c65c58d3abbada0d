"""The strategy interface: one method per phase that differs between algorithms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

Weights = dict[str, torch.Tensor]


class Strategy(ABC):
    """Maps (global weights theta_t, aggregated pseudo-gradient delta) to theta_{t+1}.

    ``delta`` is the token-weighted mean of the nodes' ``theta_t - theta_local``; any state the
    strategy keeps (momentum) round-trips through ``state_dict`` for checkpoints.
    """

    name: str

    @abstractmethod
    def step(self, weights: Weights, delta: Weights) -> Weights: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")
