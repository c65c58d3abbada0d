"""A node's update as the integer vector that secure aggregation sums, and the federation's
mean the coordinator gets back from the sum.

The federation's mean weighs each node by the tokens it trained (w_i). The coordinator may not
see a node's weighted update nor its weight, so both are summed under the masks, in one vector
(``Layout``):

- every tensor scaled by s_i = w_i / W (W: the tokens a node trains in a round at most, public
  from the round config, so s_i <= 1);
- then the whole contribution clipped to the grid's L2 norm (each node's part of the sum is
  bounded: the sensitivity central DP needs) and rounded onto the grid, with error feedback:
  what rounding and clipping left out is added to the node's next round;
- w_i itself, exact, as base-2^bits digits (a level each: sums of digits never wrap, see
  ``Grid.modulus_bits``).

The mean is then (sum of contributions) x W / (sum of w_i).

Token rows (the input embedding's and output head's row r belongs to token r) are averaged over
the nodes that saw token r: a node's row r is weighed v = min(c[r], K) / K (c[r]: how often it
saw token r, K: ``row_cap``), and min(c[r], K) goes into the sum as one level per token; the
mean row is (sum of rows) x K / (sum of levels). K = 1 is presence: each node that saw the
token counts once. The plain mean weighs rows by the counts themselves
(coordinator/strategy/fold.py), but under rounding that divides a row's error by its share of
the round's tokens: a token seen once in W would carry W grid steps of error (tried: bits per
byte 37 after one round). With the cap a row's error is at most K steps per node that saw it.
Rows no node saw get 0 (they keep their value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from step_fed.secagg.grid import Grid, clip, dequantise_sum, quantise

Shapes = dict[str, torch.Size]


def digits_for(nominal: int, bits: int) -> int:
    """Base-2^bits digits that hold any weight up to ``nominal``."""
    return max(1, math.ceil((nominal + 1).bit_length() / bits))


@dataclass(frozen=True)
class Layout:
    """Where each value of the summed vector comes from: the tensors in sorted name order,
    then the weight's digits, then (token rows) each token's presence level."""

    shapes: Shapes
    nominal: int
    """W: the most tokens a node trains in a round."""
    bits: int
    rows: tuple[str, ...] = ()
    """Tensors whose row r is averaged over the nodes that saw token r (first dim: vocab)."""
    row_cap: int = 1
    """K: a node's row r weighs min(c[r], K) / K (c[r]: how often it saw token r); 1:
    presence, every node that saw the token counts once. At most 2^bits - 1 (one level)."""

    def __post_init__(self) -> None:
        if not 1 <= self.row_cap < 1 << self.bits:
            raise ValueError(
                f"row_cap {self.row_cap} must be in [1, 2^bits - 1 = {(1 << self.bits) - 1}]"
            )

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    @property
    def digits(self) -> int:
        return digits_for(self.nominal, self.bits)

    @property
    def vocab(self) -> int:
        return int(self.shapes[self.rows[0]][0]) if self.rows else 0

    @property
    def length(self) -> int:
        return self.params + self.digits + self.vocab


def contribution(
    update: dict[str, torch.Tensor], weight: int, counts: torch.Tensor | None, layout: Layout
) -> np.ndarray:
    """(params,) float32: the node's update scaled by its weight (token rows: kept where the
    node saw the token, 0 elsewhere)."""
    if not 0 <= weight <= layout.nominal:
        raise ValueError(f"weight {weight} outside [0, {layout.nominal}]")
    if layout.rows and (counts is None or counts.shape != (layout.vocab,)):
        raise ValueError(f"token rows need ({layout.vocab},) counts")
    pieces = []
    for name in sorted(layout.shapes):
        t = update[name].detach().float()
        if name in layout.rows:
            assert counts is not None
            t = t * (counts.clamp(max=layout.row_cap).to(torch.float32) / layout.row_cap)[:, None]
        else:
            t = t * (weight / layout.nominal)
        pieces.append(t.reshape(-1).numpy())
    return np.concatenate(pieces).astype(np.float32, copy=False)


def node_levels(
    scaled: np.ndarray,
    weight: int,
    counts: torch.Tensor | None,
    layout: Layout,
    grid: Grid,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(length,) uint32 levels of a contribution (``scaled`` plus the node's carried error),
    its weight as digits and which tokens it saw; and (params,) float32, the error to carry
    into the next round (the clipped and rounded-off part)."""
    clipped = clip(scaled, grid.clip)
    levels = quantise(clipped, grid, rng)
    residual = scaled - (levels.astype(np.float64) * grid.step - grid.range).astype(np.float32)
    parts = [levels, _digits(np.array([weight]), layout)]
    if layout.rows:
        assert counts is not None
        parts.append(np.minimum(counts.numpy(), layout.row_cap).astype(np.uint32))
    return np.concatenate(parts), residual


def _digits(values: np.ndarray, layout: Layout) -> np.ndarray:
    """(n,) non-negative integers -> (n * digits,) uint32, each value's digits in a row."""
    base = 1 << layout.bits
    place = base ** np.arange(layout.digits, dtype=np.int64)  # (digits,)
    return ((values[:, None] // place) % base).astype(np.uint32).reshape(-1)


def _undigits(total: np.ndarray, layout: Layout) -> np.ndarray:
    """Sums of digit vectors (n * digits,) -> (n,) int64 sums of the values (exact)."""
    place = 1 << (layout.bits * np.arange(layout.digits, dtype=np.int64))
    sums: np.ndarray = (total.astype(np.int64).reshape(-1, layout.digits) * place).sum(axis=1)
    return sums


def summed_update(
    total: np.ndarray, count: int, layout: Layout, grid: Grid
) -> tuple[dict[str, torch.Tensor], int, np.ndarray | None]:
    """From the unmasked sum of ``count`` nodes' vectors: the sum of their contributions per
    tensor (float32), their total weight, and with token rows how many saw each token."""
    p = layout.params
    tokens = int(_undigits(total[p : p + layout.digits], layout)[0])
    seen = total[p + layout.digits :].astype(np.int64) if layout.rows else None
    summed = dequantise_sum(total[:p], count, grid)
    out, start = {}, 0
    for name in sorted(layout.shapes):
        shape = layout.shapes[name]
        out[name] = torch.from_numpy(summed[start : start + math.prod(shape)].reshape(shape))
        start += math.prod(shape)
    return out, tokens, seen


def mean_update(
    total: np.ndarray, count: int, layout: Layout, grid: Grid, equal: bool = False
) -> tuple[dict[str, torch.Tensor], int]:
    """The federation's mean update of ``count`` nodes from the unmasked sum of their
    vectors, and their total weight (0: the mean is zero). ``equal``: the nodes contributed
    their whole update each (weight W): the mean is the sum over ``count``."""
    sums, tokens, seen = summed_update(total, count, layout, grid)
    out = {}
    for name, piece in sums.items():
        wide = piece.double()
        if equal:
            wide = wide / count
        elif name in layout.rows:
            assert seen is not None
            scale = np.where(seen > 0, layout.row_cap / np.maximum(seen, 1), 0.0)
            wide = wide * torch.from_numpy(scale)[:, None]
        else:
            wide = wide * (layout.nominal / tokens if tokens else 0.0)
        out[name] = wide.float()
    return out, tokens
