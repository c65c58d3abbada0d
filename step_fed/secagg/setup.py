"""What every party of a secure-aggregation round agrees on before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from step_common.errors import StepError
from step_fed.secagg.graph import neighbours
from step_fed.secagg.grid import Grid
from step_fed.secagg.prg import CHUNK, MaskStream


class SecAggError(StepError):
    """A secure-aggregation round cannot go on safely (a key that does not verify, a request
    to reveal what must stay hidden, a message of another round)."""


class SecAggAbandoned(SecAggError):
    """Too many nodes dropped: the sum cannot be recovered; nothing of it was disclosed."""


@dataclass(frozen=True)
class RoundSetup:
    round_id: str
    """Unique per attempt: a retried or resumed round gets a new one (fresh keys and masks)."""
    nodes: tuple[str, ...]
    degree: int
    """k: neighbours per node (SecAgg+: O(log n)); >= n - 1: every other node."""
    threshold: int
    """Shares that rebuild a secret; more than half of its holders (a node's neighbours and
    the node itself)."""
    min_survivors: int
    """Nodes whose masked input must be in the sum: fewer, and the nodes refuse to unmask (a
    coordinator that drops honest nodes could otherwise isolate one node's update)."""
    grid: Grid
    length: int
    """Values in each node's flat update."""
    graph: dict[str, list[str]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        graph = neighbours(list(self.nodes), self.degree, self.round_id)
        object.__setattr__(self, "graph", graph)
        holders = min(len(v) for v in graph.values()) + 1 if graph else 0
        if not holders // 2 < self.threshold <= holders:
            raise StepError(
                f"secure aggregation: threshold {self.threshold} must be more than half of the "
                f"{holders} holders of a node's shares (its neighbours and itself) and at most "
                "all of them"
            )
        if not self.threshold <= self.min_survivors <= len(self.nodes):
            raise StepError(
                f"secure aggregation: min_survivors {self.min_survivors} must lie between the "
                f"threshold {self.threshold} and the {len(self.nodes)} nodes"
            )

    @property
    def bits(self) -> int:
        """b: masks and sums are taken mod 2^b."""
        return self.grid.modulus_bits(len(self.nodes))

    def point(self, node: str) -> int:
        """The Shamir point of ``node``'s shares (1-based: 0 is the secret)."""
        return self.nodes.index(node) + 1


def add_masks(values: np.ndarray, terms: list[tuple[bytes, int]], bits: int) -> np.ndarray:
    """``values`` (uint32, in place) plus sign x the mask of each (seed, sign), mod 2^bits."""
    streams = [(MaskStream(seed, bits), sign) for seed, sign in terms]
    for start in range(0, len(values), CHUNK):
        piece = values[start : start + CHUNK]
        for stream, sign in streams:
            mask = stream.take(len(piece))
            if sign > 0:
                piece += mask  # uint32 arithmetic wraps: mod 2^32, then mod 2^bits below
            else:
                piece -= mask
        piece &= np.uint32((1 << bits) - 1)
    return values


def pair_sign(me: str, other: str) -> int:
    """+1 for the smaller name of a pair, -1 for the larger: their masks cancel in the sum."""
    return 1 if me < other else -1
