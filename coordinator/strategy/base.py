"""The strategy interface: one method per phase that differs between algorithms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from coordinator.replies import TrainReply, weighted_mean_delta
from coordinator.replies import Weights as Weights


class Strategy(ABC):
    """Maps (global weights theta_t, aggregated pseudo-gradient delta) to theta_{t+1}.

    ``delta`` is the token-weighted mean of the nodes' ``theta_t - theta_local``; any state the
    strategy keeps (momentum) round-trips through ``state_dict`` for checkpoints.
    """

    name: str

    def aggregate(self, replies: list[TrainReply], token_rows: bool, sample_rate: float) -> Weights:
        """The round's pseudo-gradient from the checked updates: their token-weighted mean.
        ``sample_rate`` is the share of connected nodes that were asked (for privacy wrappers)."""
        return weighted_mean_delta(replies, token_rows=token_rows)

    @abstractmethod
    def step(self, weights: Weights, delta: Weights) -> Weights: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")
