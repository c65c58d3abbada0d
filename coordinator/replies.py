"""Checking what nodes send back before anything of it touches the global model.

A transport (Flower in production, an in-process loop in tests) hands over ``RawReply``s; here
each becomes a ``TrainReply``/``EvalReply`` or a ``Rejection`` with the reason: an error reply,
a reply for another round, missing or malformed metrics, an update whose keys, shapes or dtypes
differ from the model's, non-finite values, or an update norm over the configured limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from coordinator.encoded_update import EncodedUpdate
from step_common.errors import StepError
from step_fed import protocol as P
from step_fed.protocol import EMBEDDING_WEIGHT as EMBEDDING
from step_fed.secagg.wire import unpack
from step_fed.transport import RawReply
from step_fed.update_codec import encoded_bytes
from step_model.evaluate import pooled_bpb


@dataclass
class Rejection:
    node_id: int
    node: str
    reason: str


@dataclass
class TrainReply:
    node_id: int
    node: str
    num_tokens: int
    loss: float
    tokens_per_language: dict[str, int]
    delta: Mapping[str, torch.Tensor]
    """The update, decoded tensor by tensor when read (encoded_update.py)."""
    bytes_up: int
    wall_s: float
    norm: float
    token_counts: torch.Tensor | None = None
    """(vocab,) how often each token id was a training target at this node this round."""
    epsilon: float | None = None
    """Local DP: the epsilon this node has spent in total (None: the node trains without DP)."""
    epsilon_report: str = ""
    """The report of that epsilon as the node signed it (P.EPSILON_REPORT), and its signature."""
    epsilon_signature: str = ""


@dataclass
class EvalReply:
    node_id: int
    node: str
    nll: dict[str, float]
    n_bytes: dict[str, int]


def _metric(raw: RawReply, key: str) -> float:
    value = raw.metrics.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"metric {key!r} missing or not a finite number")
    return float(value)


def _rejection(raw: RawReply, reason: str) -> Rejection:
    return Rejection(raw.node_id, raw.node or f"node {raw.node_id}", reason)


def check_train_reply(
    raw: RawReply,
    round_: int,
    encoding: str,
    shapes: dict[str, torch.Size],
    max_norm: float,
    max_tokens: int = 0,
    seen_rows: int = 0,
    exact_norms: bool = True,
) -> TrainReply | Rejection:
    """``max_tokens``: the most a node can have trained on this round (steps x batch x
    sequence length; 0: no check). A token count is the aggregation weight, so a node
    claiming more than it could have seen is trying to weigh more than it may.
    ``seen_rows``: the round config's; a node that sends token counts sends only the rows of the
    tokens it saw of the tensors ``P.SEEN_ROWS[seen_rows]``; they are put back in place, the
    other rows are 0. ``exact_norms``: False under central DP, whose guarantee does not cover a
    node's unclipped update norm, so a rejection does not quote it."""
    if raw.error is not None:
        return _rejection(raw, raw.error)
    try:
        num_tokens = _checked_num_tokens(raw, round_, max_tokens)
        delta, counts = _decoded_delta(raw, encoding, shapes, seen_rows)
        bad, norm = _finite_norm(delta)  # reads every tensor: a malformed one is refused here
    except ValueError as e:
        return _rejection(raw, str(e))
    if bad:
        return _rejection(raw, f"update has non-finite values in {bad[:3]}")
    if max_norm and norm > max_norm:
        shown = f" {norm:.3g}" if exact_norms else ""
        return _rejection(
            raw, f"update norm{shown} exceeds federation.max_update_norm {max_norm:.3g}"
        )
    return _accepted(raw, num_tokens=num_tokens, delta=delta, counts=counts, norm=norm)


def _checked_num_tokens(raw: RawReply, round_: int, max_tokens: int) -> int:
    """The reply's training token count; ValueError (the rejection's reason) if the reply is for
    another round or the count is not one the round allows."""
    replied_round = int(_metric(raw, P.M_ROUND))
    if replied_round != round_:
        raise ValueError(f"reply is for round {replied_round}, not {round_}")
    num_tokens = int(_metric(raw, P.M_NUM_TOKENS))
    if num_tokens <= 0:
        raise ValueError("reported no training tokens")
    if max_tokens and num_tokens > max_tokens:
        raise ValueError(
            f"claims {num_tokens} training tokens, more than the round allows ({max_tokens})"
        )
    return num_tokens


def _decoded_delta(
    raw: RawReply, encoding: str, shapes: dict[str, torch.Size], seen_rows: int
) -> tuple[EncodedUpdate, torch.Tensor | None]:
    """(the update, read tensor by tensor with seen rows put back in place; the token counts if
    sent); ValueError (the rejection's reason) if either is malformed."""
    arrays = dict(raw.arrays)
    counts = arrays.pop(P.TOKEN_COUNTS, None)
    vocab = shapes[EMBEDDING][0]
    if counts is not None and (
        counts.shape != (vocab,) or counts.dtype != torch.int32 or bool((counts < 0).any())
    ):
        raise ValueError(f"{P.TOKEN_COUNTS} must be ({vocab},) non-negative int32")
    names = P.SEEN_ROWS[seen_rows] if counts is not None else ()  # DP nodes send no counts
    if counts is not None and names:
        return EncodedUpdate(arrays, encoding, shapes, counts > 0, names), counts
    return EncodedUpdate(arrays, encoding, shapes), counts


def _finite_norm(delta: EncodedUpdate) -> tuple[list[str], float]:
    """The tensors with non-finite values, and the update's L2 norm: one decode per tensor.
    A tensor's sum of squares (float64: an fp32 square cannot overflow it) is finite exactly
    when all its values are."""
    bad, squares = [], []
    for name in delta:
        square = sum_of_squares(delta[name])
        if not math.isfinite(square):
            bad.append(name)
        squares.append(square)
    return bad, math.sqrt(sum(squares))


CHUNK = 1 << 20
"""Elements squared in float64 at once (8 MiB): no float64 copy of a whole tensor."""


def sum_of_squares(t: torch.Tensor) -> float:
    flat = t.reshape(-1)
    chunks = (flat[i : i + CHUNK] for i in range(0, len(flat), CHUNK))
    return sum(float(c.double().pow_(2).sum()) for c in chunks)


def _accepted(
    raw: RawReply,
    *,
    num_tokens: int,
    delta: Mapping[str, torch.Tensor],
    counts: torch.Tensor | None,
    norm: float,
) -> TrainReply | Rejection:
    """The reply whose update passed, unless its epsilon is not a non-negative number."""
    tokens = {k: int(v) for k, v in P.per_language(P.M_TOKENS_PREFIX, raw.metrics).items()}
    epsilon = raw.metrics.get(P.M_EPSILON)
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and epsilon >= 0):
        return _rejection(raw, f"metric {P.M_EPSILON!r} = {epsilon!r} is not a non-negative number")
    return TrainReply(
        raw.node_id,
        raw.node or f"node {raw.node_id}",
        num_tokens,
        float(raw.metrics.get(P.M_TRAIN_LOSS, float("nan"))),
        tokens,
        delta,
        encoded_bytes(raw.arrays),
        float(raw.metrics.get(P.M_WALL_S, 0.0)),
        norm,
        counts,
        None if epsilon is None else float(epsilon),
        raw.info.get(P.EPSILON_REPORT, ""),
        raw.info.get(P.EPSILON_SIGNATURE, ""),
    )


def check_secure_reply(
    raw: RawReply, round_: int, bits: int, length: int
) -> tuple[TrainReply, np.ndarray] | Rejection:
    """A secure round's train reply: for this round, with a masked input of the round's type
    and length (values of at most ``bits`` bits), and a sane epsilon. What it carries of the
    update can only be checked in the sum (the masks look uniform on their own)."""
    if raw.error is not None:
        return _rejection(raw, raw.error)
    try:
        replied_round = int(_metric(raw, P.M_ROUND))
        if replied_round != round_:
            raise ValueError(f"reply is for round {replied_round}, not {round_}")
        arrays = dict(raw.arrays)
        masked = arrays.pop(P.SECAGG_MASKED, None)
        if masked is None or arrays:
            raise ValueError(f"a secure reply carries {P.SECAGG_MASKED!r} and nothing else")
        values = unpack(masked.numpy(), bits, length, raw.node or f"node {raw.node_id}")
    except (ValueError, TypeError, StepError) as e:
        return _rejection(raw, str(e))
    reply = _accepted(raw, num_tokens=0, delta={}, counts=None, norm=float("nan"))
    return reply if isinstance(reply, Rejection) else (reply, values)


def check_epsilon(reply: TrainReply, previous: float | None) -> Rejection | None:
    """A local-DP node's epsilon is its total spend: every round it trains adds to it. One that
    reports no more than it did before has reset or edited its privacy ledger (the spend it
    reports would be false), so its update is not used."""
    if reply.epsilon is None or previous is None or reply.epsilon > previous:
        return None
    return Rejection(
        reply.node_id,
        reply.node,
        f"reported epsilon {reply.epsilon:.4f}, not more than the {previous:.4f} it reported "
        "before: its privacy ledger was reset or edited; its operator must explain it (the "
        "admin accepts a reset with `step-coord accept-reset NODE`)",
    )


def check_eval_reply(raw: RawReply, round_: int) -> EvalReply | Rejection:
    name = raw.node or f"node {raw.node_id}"
    if raw.error is not None:
        return Rejection(raw.node_id, name, raw.error)
    nll = P.per_language(P.M_NLL_PREFIX, raw.metrics)
    n_bytes = {k: int(v) for k, v in P.per_language(P.M_EVAL_BYTES_PREFIX, raw.metrics).items()}
    if set(nll) != set(n_bytes) or not all(math.isfinite(v) and v >= 0 for v in nll.values()):
        return Rejection(raw.node_id, name, "evaluation metrics are inconsistent or not finite")
    if raw.metrics.get(P.M_ROUND) != round_:
        return Rejection(raw.node_id, name, f"evaluation reply is not for round {round_}")
    return EvalReply(raw.node_id, name, nll, n_bytes)


def bits_per_byte(replies: list[EvalReply]) -> dict[str, float]:
    """Per language, pooled over the nodes (in name order, so a resumed run sums alike)."""
    ordered = sorted(replies, key=lambda r: (r.node, r.node_id))
    return pooled_bpb((lang, v, r.n_bytes[lang]) for r in ordered for lang, v in r.nll.items())
