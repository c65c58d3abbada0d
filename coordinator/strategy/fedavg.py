"""FedAvg: the next global model is the token-weighted mean of the nodes' local models.

theta_{t+1} = theta_t - mean(theta_t - theta_local) = mean(theta_local): DiLoCo with outer
learning rate 1 and no momentum.
"""

from __future__ import annotations

from coordinator.strategy.base import Strategy, Weights


class FedAvg(Strategy):
    name = "fedavg"

    def step(self, weights: Weights, delta: Weights) -> Weights:
        """In place, as DiLoCo's step (the round loop owns ``weights``)."""
        for k, w in weights.items():
            w.sub_(delta[k])
        return weights
