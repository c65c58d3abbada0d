"""The strategy interface: one method per phase that differs between algorithms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from coordinator.replies import TrainReply
from coordinator.strategy.fold import RoundAggregate, node_order
from coordinator.strategy.robust import Aggregation, Park, as_is
from step_fed.transport import Weights as Weights


class Strategy(ABC):
    """Maps (global weights theta_t, aggregated pseudo-gradient delta) to theta_{t+1}.

    ``delta`` is the token-weighted mean of the nodes' ``theta_t - theta_local``; any state the
    strategy keeps (momentum) round-trips through ``state_dict`` for checkpoints.
    """

    name: str
    aggregation: Aggregation = Aggregation()
    """How the round's updates are combined (robust.py); set by ``make_strategy``."""
    dropped: tuple[str, ...] = ()
    """Nodes whose update the robust rule dropped in the last round (reported per round)."""

    def start(self, token_rows: bool, sample_rate: float, park: Park = as_is) -> RoundAggregate:
        """A round's aggregation, fed the checked updates one at a time in node-name order (the
        token-weighted mean or a robust rule). ``sample_rate``: the share of connected nodes
        asked (privacy wrappers); ``park``: how updates a rule keeps are held."""
        return self.aggregation.start(token_rows, park)

    def finish(self, aggregate: RoundAggregate) -> Weights:
        """The round's pseudo-gradient; notes the nodes the rule dropped."""
        delta = aggregate.result()
        self.dropped = tuple(aggregate.dropped)
        return delta

    def aggregate(self, replies: list[TrainReply], token_rows: bool, sample_rate: float) -> Weights:
        """The same from updates all at hand (sorted here)."""
        aggregate = self.start(token_rows, sample_rate)
        for r in sorted(replies, key=node_order):
            aggregate.add(r)
        return self.finish(aggregate)

    @abstractmethod
    def step(self, weights: Weights, delta: Weights) -> Weights:
        """theta_{t+1}; may update ``weights`` in place (the round loop owns them)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")
