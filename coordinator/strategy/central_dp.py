"""Central differential privacy (institution level): a wrapper around any strategy.

DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent language models";
Flower's ``DifferentialPrivacyServerSideFixedClipping``). Each round:

    delta_i  <- delta_i * min(1, C / ||delta_i||)          clip every node's pseudo-gradient
    delta    <- (sum_i delta_i + N(0, (sigma C)^2 I)) / n   noisy mean, equal node weights
    theta    <- inner strategy's outer step on delta        (DiLoCo, FedAvg, ...)

The unit protected is a whole institution: adding or removing one node changes the sum by at
most C. Equal weights (not token weights) keep that bound; token-aware rows are off for the same
reason. Each round is one subsampled Gaussian mechanism with sample rate q = nodes asked /
nodes connected (1 while every connected node is asked every round, as now: no amplification
by sampling); an Opacus RDP accountant composes the rounds. The noise comes from a generator
seeded by the operating system, so a resumed run is not bitwise identical to an uninterrupted
one (the accountant's history is restored, so epsilon is).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from opacus.accountants import RDPAccountant

from coordinator.replies import TrainReply
from coordinator.strategy.base import Strategy, Weights
from coordinator.strategy.fold import MeanFold, RoundAggregate
from coordinator.strategy.robust import Park, as_is, clip_scale
from step_fed.secret_rng import secret_generator


class CentralDP(Strategy):
    def __init__(
        self,
        inner: Strategy,
        noise_multiplier: float,
        clip_norm: float,
        delta: float,
        seed: int | None = None,
    ) -> None:
        self.inner = inner
        self.name = f"{inner.name}+central-dp"
        self.noise_multiplier, self.clip_norm, self.delta = noise_multiplier, clip_norm, delta
        self.history: list[tuple[float, float, int]] = []
        """Opacus accountant history: one (sigma, q, 1) per round."""
        self.generator = secret_generator(seed)
        self.clipped: list[str] = []
        """Nodes whose update was clipped in the last round (reported per round)."""
        self.sample_rate = 1.0
        """q of the round in progress: nodes asked / nodes connected."""

    def start(self, token_rows: bool, sample_rate: float, park: Park = as_is) -> RoundAggregate:
        """Equal weights, no token rows: ``token_rows`` is not used (see above)."""
        self.clipped = []
        self.sample_rate = sample_rate
        return NoisyMean(self)

    def epsilon(self) -> float:
        if not self.history:
            return 0.0
        accountant = RDPAccountant()
        accountant.history = list(self.history)
        eps = float(accountant.get_epsilon(self.delta))
        return eps if math.isfinite(eps) else float("inf")

    def step(self, weights: Weights, delta: Weights) -> Weights:
        return self.inner.step(weights, delta)

    def release(self, total: Weights, nodes: int, sensitivity: float) -> Weights:
        """The noisy mean of ``nodes`` updates from their sum ``total`` (in place), each
        update bounded by ``sensitivity`` in L2 norm: one release of the Gaussian mechanism,
        entered in the accountant's history."""
        std = self.noise_multiplier * sensitivity
        for k in sorted(total):  # the generator's draws in a fixed order
            noise = torch.normal(0.0, std, total[k].shape, generator=self.generator)
            total[k] = (total[k] + noise) / nodes
        self.history.append((self.noise_multiplier, self.sample_rate, 1))
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "dp_history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        self.history = [(float(s), float(q), int(n)) for s, q, n in state.get("dp_history", [])]


class NoisyMean:
    """A round of central DP: each update clipped to C and added to the sum as it comes (in
    node-name order); at the end the noise, and the division by the node count."""

    def __init__(self, dp: CentralDP) -> None:
        self.dp = dp
        self.fold = MeanFold()
        self.nodes = 0
        self.dropped: list[str] = []

    def add(self, reply: TrainReply) -> None:
        scale = clip_scale(reply.norm, self.dp.clip_norm)
        if scale < 1.0:
            self.dp.clipped.append(reply.node)
        self.fold.add(reply.delta, scale)
        self.nodes += 1

    def result(self) -> Weights:
        if not self.nodes:
            raise ValueError("no update was added")
        return self.dp.release(self.fold.total(), self.nodes, self.dp.clip_norm)
