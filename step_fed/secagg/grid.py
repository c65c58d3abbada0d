"""The integer grid every node quantises its update onto, so that masked integers add up.

A node clips its update to L2 norm ``clip``, clamps each coordinate to [-range, range] and
rounds it stochastically to one of 2^bits levels (unbiased: E[level] is the value's place on the
grid); the coordinator unmasks the sum of the levels, exact, and turns it back into the sum of
the values. Masks are taken mod 2^b with b = bits + ceil(log2 nodes), wide enough that the sum
of ``nodes`` levels never wraps around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    clip: float
    """L2 norm each node's update is clipped to (the sensitivity central DP uses)."""
    range: float
    """Each coordinate is clamped to [-range, range] before it is rounded."""
    bits: int
    """Levels per coordinate: 2^bits."""

    @property
    def step(self) -> float:
        return 2 * self.range / ((1 << self.bits) - 1)

    def modulus_bits(self, nodes: int) -> int:
        """b: the sum of ``nodes`` levels fits in b bits."""
        return self.bits + max(1, math.ceil(math.log2(max(nodes, 2))))


def clip(update: np.ndarray, norm: float) -> np.ndarray:
    """``update`` (float32) scaled down to L2 norm ``norm`` if it is longer."""
    length = float(np.linalg.norm(update.astype(np.float64)))
    return update if length <= norm else (update * (norm / length)).astype(np.float32)


def quantise(values: np.ndarray, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 (clipped already) -> (n,) uint32 levels in [0, 2^bits), stochastically
    rounded: unbiased inside the range."""
    scaled = (np.clip(values, -grid.range, grid.range).astype(np.float64) + grid.range) / grid.step
    levels: np.ndarray = np.floor(scaled + rng.random(scaled.shape))
    top: np.ndarray = np.minimum(levels, (1 << grid.bits) - 1)
    return top.astype(np.uint32)


def dequantise_sum(total: np.ndarray, count: int, grid: Grid) -> np.ndarray:
    """The sum of ``count`` nodes' values from the sum of their levels (float32)."""
    return (total.astype(np.float64) * grid.step - count * grid.range).astype(np.float32)
