"""The token-weighted mean of a round's updates, added one update at a time.

The round loop folds each update into a running sum when its turn comes and drops it
(coordinator/in_order.py gives the turns: node-name order, whatever order the replies arrive
in), so the coordinator holds one sum, not one update per node: its memory grows with the
model, not with model x nodes. Float addition is not associative; a fixed order is what keeps
a resumed run's sums bit for bit those of an uninterrupted one.

    sum_k  <- sum_k + w_i * update_i[k]          for every tensor k, node i in order
    mean_k  = sum_k / sum_i w_i                  (w_i: node i's training tokens)

With token rows (``weighted_mean_delta`` below says why), row r of the input embedding and
of the output head is instead weighted by how often each node saw token r: a second running sum
for those two tensors, sum_i counts_i[r] * update_i[k][r], divided by the tokens' total count;
rows nobody saw keep the plain mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from coordinator.replies import TrainReply
from step_fed.protocol import EMBEDDING_WEIGHT, OUTPUT_WEIGHT
from step_fed.transport import Weights

TOKEN_ROWS = (EMBEDDING_WEIGHT, OUTPUT_WEIGHT)


class MeanFold:
    """The running weighted sum of updates (and of token rows), and its mean at the end."""

    def __init__(self, token_rows: bool = False) -> None:
        self.sums: Weights = {}
        self.weight = 0.0
        self.token_rows = token_rows
        """Still weighting token rows: every update so far came with its token counts."""
        self.rows: Weights = {}
        """TOKEN_ROWS name -> (vocab, dim) sum of counts_i[r] * update_i[r]."""
        self.seen: torch.Tensor | None = None
        """(vocab,) int64: how often each token was a training target, over the nodes."""

    def add(
        self, update: Mapping[str, torch.Tensor], weight: float, counts: torch.Tensor | None = None
    ) -> None:
        """Add ``weight * update``, reading the update one tensor at a time."""
        if counts is None and self.token_rows:  # one node without counts: the plain mean
            self.token_rows, self.rows, self.seen = False, {}, None
        for name, t in update.items():  # one decode per tensor
            if self.token_rows and name in TOKEN_ROWS and counts is not None:
                self._add_rows(name, t, counts)
            if name in self.sums:
                self.sums[name].add_(t, alpha=weight)
            else:
                self.sums[name] = t * weight  # a new tensor: the update's own is not changed
        self.weight += weight
        if self.token_rows and counts is not None:
            c = counts.to(torch.int64)
            self.seen = c if self.seen is None else self.seen + c

    def _add_rows(self, name: str, t: torch.Tensor, counts: torch.Tensor) -> None:
        rows = t * counts.to(t.dtype)[:, None]  # (vocab, dim)
        if name in self.rows:
            self.rows[name].add_(rows)
        else:
            self.rows[name] = rows

    def total(self) -> Weights:
        """The weighted sum (central DP adds its noise to it)."""
        return self.sums

    def mean(self) -> Weights:
        """The weighted mean, computed in place of the sums (the fold is used up)."""
        if not self.sums:
            raise ValueError("no update was added")
        for t in self.sums.values():
            t.div_(self.weight)
        if self.token_rows and self.seen is not None:
            seen = self.seen  # (vocab,)
            divisor = seen.clamp_min(1).to(torch.float32)[:, None]
            for name, rows in self.rows.items():
                self.sums[name] = torch.where((seen > 0)[:, None], rows.div_(divisor),
                                              self.sums[name])  # fmt: skip
        self.rows = {}
        return self.sums


class RoundAggregate(Protocol):
    """One round's aggregation, fed the checked updates one at a time in node-name order."""

    dropped: list[str]
    """Nodes whose update the rule left out (robust rules), known after ``result``."""

    def add(self, reply: TrainReply) -> None: ...

    def result(self) -> Weights:
        """The round's pseudo-gradient (ValueError if no update was added)."""
        ...


class MeanAggregate:
    """The token-weighted mean, folded as the updates come: nothing of an update is kept."""

    def __init__(self, token_rows: bool) -> None:
        self.fold = MeanFold(token_rows)
        self.dropped: list[str] = []

    def add(self, reply: TrainReply) -> None:
        self.fold.add(reply.delta, reply.num_tokens, reply.token_counts)

    def result(self) -> Weights:
        return self.fold.mean()


def weighted_mean_delta(replies: list[TrainReply], token_rows: bool = False) -> Weights:
    """Token-weighted mean of the updates, added in node-name order (bitwise reproducible).

    With ``token_rows``, row k of the input embedding and of the output head is instead averaged
    over the nodes in proportion to how often each saw token k. A language held by one node
    would otherwise have its script's rows moved at 1/N speed by the plain mean, where the
    centralized AdamW gives them full steps (Adam normalises per coordinate). Rows that no node
    saw fall back to the plain mean (for the input embedding sent as seen rows, a mean of
    zeros: its rows get no gradient from tokens nobody trained on).
    """
    mean = MeanAggregate(token_rows)
    for r in sorted(replies, key=node_order):
        mean.add(r)
    return mean.result()


def node_order(reply: TrainReply) -> tuple[str, int]:
    """The order updates are added in: by node name (then id), so sums are reproducible."""
    return reply.node, reply.node_id
