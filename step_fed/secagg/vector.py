"""A node's update as the integer vector that secure aggregation sums, and the token-weighted
mean the coordinator gets back from the sum.

The federation's mean weighs each node by the tokens it trained (w_i). The coordinator may not
see a node's w_i u_i nor its w_i, so both are summed under the masks, in one vector:

- the update, scaled by s_i = w_i / W (W: the tokens a node trains in a round at most, public
  from the round config, so s_i <= 1), clipped to the grid's L2 norm (each node's contribution
  to the sum is bounded: the sensitivity central DP needs) and rounded onto the grid;
- w_i itself, exact, as base-2^bits digits (a level each: sums of digits never wrap, see
  ``Grid.modulus_bits``), so the coordinator recovers the total weight with no rounding.

The mean is then (sum of the contributions) x W / (sum of w_i).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from step_fed.secagg.grid import Grid, clip, dequantise_sum, quantise

Shapes = dict[str, torch.Size]


def digits_for(nominal: int, bits: int) -> int:
    """Base-2^bits digits that hold any weight up to ``nominal``."""
    return max(1, math.ceil((nominal + 1).bit_length() / bits))


def length(shapes: Shapes, nominal: int, bits: int) -> int:
    """Values in the summed vector: every parameter, then the weight's digits."""
    return sum(math.prod(s) for s in shapes.values()) + digits_for(nominal, bits)


def node_levels(
    update: dict[str, torch.Tensor],
    weight: int,
    nominal: int,
    grid: Grid,
    rng: np.random.Generator,
) -> np.ndarray:
    """(length,) uint32: the node's scaled, clipped, rounded update (its tensors in sorted
    name order) and its weight's digits."""
    if not 0 <= weight <= nominal:
        raise ValueError(f"weight {weight} outside [0, {nominal}]")
    flat = np.concatenate([update[k].detach().float().reshape(-1).numpy() for k in sorted(update)])
    scaled = clip((flat * (weight / nominal)).astype(np.float32), grid.clip)
    base = 1 << grid.bits
    digits = [(weight // base**i) % base for i in range(digits_for(nominal, grid.bits))]
    return np.concatenate([quantise(scaled, grid, rng), np.array(digits, dtype=np.uint32)])


def mean_update(
    total: np.ndarray, count: int, nominal: int, grid: Grid, shapes: Shapes
) -> tuple[dict[str, torch.Tensor], int]:
    """The token-weighted mean update of ``count`` nodes from the unmasked sum of their
    vectors, and their total weight (0: the mean is zero)."""
    n_digits = digits_for(nominal, grid.bits)
    weights = total[-n_digits:].astype(np.int64)
    tokens = int(sum(int(d) << (grid.bits * i) for i, d in enumerate(weights)))
    summed = dequantise_sum(total[:-n_digits], count, grid)
    scale = nominal / tokens if tokens else 0.0
    out, start = {}, 0
    for name in sorted(shapes):
        size = math.prod(shapes[name])
        piece = summed[start : start + size] * scale
        out[name] = torch.from_numpy(piece.astype(np.float32)).reshape(shapes[name])
        start += size
    return out, tokens
