"""How the checked updates of a round become one pseudo-gradient: the mean, or a robust rule
for when a node may send garbage that passes validation (finite, right shapes, under the norm
bound) but is still wrong: a flipped sign, scaled or random updates.

- ``mean``: token-weighted mean (with token-aware embedding/output rows, replies.py);
- ``trimmed_mean``: per coordinate, drop the ``trim_fraction`` largest and smallest values of
  the nodes, average the rest (Yin et al. 2018);
- ``median``: per coordinate, the median over the nodes (Yin et al. 2018);
- ``norm_clip``: every update scaled down to L2 norm at most C (``aggregation_clip``, or the
  round's median update norm when 0), then the token-weighted mean: one node moves the model by
  at most C times its weight (Sun et al. 2019, "Can you really backdoor federated learning?");
- ``filtered_mean``: drop the updates whose cosine similarity with the coordinate-wise median
  is below ``filter_cosine`` (flipped, random or otherwise off-consensus updates), clip the rest
  as ``norm_clip`` does, then the token-weighted mean with token-aware rows, so that the honest
  nodes keep the quality of the plain mean. Dropped nodes are reported per round.

The coordinate-wise rules weigh nodes equally (a token count is the node's own claim) and hold
while fewer than ``trim_fraction`` (resp. half) of the nodes misbehave. With non-IID data they
also discard honest outliers, such as the only node holding a language, which costs quality
(bench/RESULTS.md, "Byzantine institutions").
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from coordinator.encoded_update import EncodedUpdate
from coordinator.replies import TrainReply
from coordinator.strategy.fold import MeanAggregate, RoundAggregate, node_order, weighted_mean_delta
from step_fed.transport import Weights

Update = Mapping[str, torch.Tensor]
"""A node's update, read tensor by tensor (coordinator/encoded_update.py)."""
Park = Callable[[TrainReply], TrainReply]
"""How a reply that waits is kept (coordinator/spill.py)."""


def as_is(reply: TrainReply) -> TrainReply:
    return reply


@dataclass(frozen=True)
class Aggregation:
    rule: str = "mean"
    trim_fraction: float = 0.25
    """trimmed_mean: share of the nodes dropped at each end, per coordinate."""
    clip_norm: float = 0.0
    """norm_clip, filtered_mean: the bound C (0: the round's median update norm)."""
    filter_cosine: float = 0.1
    """filtered_mean: the least cosine similarity with the coordinate-wise median kept."""

    def start(self, token_rows: bool, park: Park = as_is) -> RoundAggregate:
        """A round's aggregation: the mean folds each update as it comes; the robust rules
        need every update at once and keep them (encoded, as ``park`` makes them: on disk
        beyond a memory budget, coordinator/spill.py) until the end of the round."""
        if self.rule == "mean":
            return MeanAggregate(token_rows)
        return KeepAll(self, token_rows, park)

    def apply(self, replies: list[TrainReply], token_rows: bool) -> tuple[Weights, list[str]]:
        """The aggregate and the names of the nodes whose update the rule dropped."""
        ordered = sorted(replies, key=node_order)  # reproducible sums
        if self.rule == "trimmed_mean":
            return trimmed_mean([r.delta for r in ordered], self.trim_fraction), []
        if self.rule == "median":
            return coordinate_median([r.delta for r in ordered]), []
        if self.rule == "norm_clip":
            return norm_clipped_mean(ordered, self.clip_norm), []
        if self.rule == "filtered_mean":
            return filtered_mean(ordered, self.filter_cosine, self.clip_norm, token_rows)
        return weighted_mean_delta(ordered, token_rows=token_rows), []


class KeepAll:
    """A robust rule's round: the updates kept as they came (encoded), combined at the end one
    tensor at a time across the nodes."""

    def __init__(self, aggregation: Aggregation, token_rows: bool, park: Park) -> None:
        self.aggregation, self.token_rows, self.park = aggregation, token_rows, park
        self.replies: list[TrainReply] = []
        self.dropped: list[str] = []

    def add(self, reply: TrainReply) -> None:
        self.replies.append(self.park(reply))

    def result(self) -> Weights:
        if not self.replies:
            raise ValueError("no update was added")
        delta, self.dropped = self.aggregation.apply(self.replies, self.token_rows)
        self.replies = []
        return delta


def _stacked(deltas: list[Update], name: str) -> torch.Tensor:
    return torch.stack([d[name] for d in deltas])  # (nodes, *shape)


def trimmed_mean(deltas: list[Update], trim_fraction: float) -> Weights:
    n = len(deltas)
    k = min(int(trim_fraction * n), (n - 1) // 2)  # keep at least one value per coordinate
    out = {}
    for name in deltas[0]:
        values = _stacked(deltas, name).sort(dim=0).values  # (nodes, *shape), ascending
        out[name] = values[k : n - k].mean(dim=0)
    return out


def coordinate_median(deltas: list[Update]) -> Weights:
    return {name: median_of(_stacked(deltas, name)) for name in deltas[0]}


def median_of(stacked: torch.Tensor) -> torch.Tensor:
    """(nodes, *shape) -> (*shape): per coordinate, the mean of the two middle values for an
    even node count (torch.median takes the lower)."""
    n = stacked.shape[0]
    # the k-th smallest (1-based) without sorting the whole stack: no (nodes, *shape) copies
    low = stacked.kthvalue((n + 1) // 2, dim=0).values  # sorted index (n - 1) // 2
    if n % 2:
        return low
    return (low + stacked.kthvalue(n // 2 + 1, dim=0).values) / 2  # and sorted index n // 2


def cosine_to_median(replies: list[TrainReply]) -> list[float]:
    """Each update's cosine similarity with the coordinate-wise median of all of them, summed
    tensor by tensor (float64): the median is never whole in memory."""
    dots = [0.0] * len(replies)
    norms = [0.0] * len(replies)
    median_sq = 0.0
    for name in replies[0].delta:
        stacked = _stacked([r.delta for r in replies], name)  # (nodes, *shape)
        median = median_of(stacked).double()
        median_sq += float(median.pow(2).sum())
        for i in range(len(replies)):  # one node's tensor in float64 at a time
            d = stacked[i].double()
            dots[i] += float((d * median).sum())
            norms[i] += float(d.pow_(2).sum())
    out = []
    for dot, sq in zip(dots, norms, strict=True):
        denom = math.sqrt(sq) * math.sqrt(median_sq)
        out.append(dot / denom if denom > 0 else 0.0)
    return out


def filtered_mean(
    replies: list[TrainReply], min_cosine: float, clip_norm: float, token_rows: bool
) -> tuple[Weights, list[str]]:
    cosines = cosine_to_median(replies)
    kept = [r for r, c in zip(replies, cosines, strict=True) if c >= min_cosine]
    dropped = [r.node for r, c in zip(replies, cosines, strict=True) if c < min_cosine]
    if not kept:  # no consensus at all: fall back to the median, which needs none
        return coordinate_median([r.delta for r in replies]), dropped
    bound = clip_norm or statistics.median(r.norm for r in kept)
    return weighted_mean_delta(clip_to(kept, bound), token_rows=token_rows), dropped


def clip_scale(norm: float, bound: float) -> float:
    """The factor that brings an update of L2 norm ``norm`` to at most ``bound``."""
    return min(1.0, bound / norm) if norm > 0 else 1.0


def clip_to(replies: list[TrainReply], bound: float) -> list[TrainReply]:
    """The replies with every update scaled to L2 norm at most ``bound`` (read scaled, tensor
    by tensor: nothing is decoded here)."""
    return [
        replace(r, delta=_scaled(r.delta, clip_scale(r.norm, bound))) if r.norm > bound else r
        for r in replies
    ]


def _scaled(delta: Update, scale: float) -> Update:
    if isinstance(delta, EncodedUpdate):
        return delta.scaled(scale)
    return {k: t * scale for k, t in delta.items()}


def norm_clipped_mean(replies: list[TrainReply], clip_norm: float) -> Weights:
    bound = clip_norm or statistics.median(r.norm for r in replies)
    return weighted_mean_delta(clip_to(replies, bound), token_rows=False)
