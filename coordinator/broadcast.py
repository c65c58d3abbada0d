"""The intN-delta broadcast: send the nodes only the change since the weights they already hold.

Whole weights in bf16 cost 2 bytes per parameter per node per round, twice what an int8 update
costs on the way up. With ``broadcast_encoding: int8-delta`` (or ``int4-delta``, ``int2-delta``)
the coordinator keeps the *view*: the exact fp32 weights every node holds. A round sends
intN(global - view) per row (1 byte, half or a quarter of a byte per parameter + a scale per
row); coordinator and node both add it to the view with the same fp32 arithmetic
(``update_codec.apply_delta``), and the result is the new view. The rounding error is
not lost: it stays in (global - view) and goes out with the next change (error feedback), so
the nodes' weights never drift from the global ones by more than one round's rounding.

Views are named by a content hash (``update_codec.view_id``). A node whose view is not the one
the change applies to (it joined late, missed a broadcast, lost its state, or the coordinator
resumed from a checkpoint older than the node's view) answers ``ERR_STALE_VIEW`` and is sent the
new view whole, in fp32, in the same round.

The first message of a fresh run carries no weights at all (``seed``): every node draws the
initial weights with the run's seed, as the coordinator did, and checks their id; a node whose
torch draws other bits answers ``ERR_STALE_VIEW`` and is sent them whole. A warm start
(``init_from``) sends them whole in bf16 (the view starts as their bf16 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from step_fed.protocol import DELTA_SUFFIX, SEED_BROADCAST
from step_fed.update_codec import apply_delta, encode, view_id

Weights = dict[str, torch.Tensor]


@dataclass
class Message:
    """What to send: the encoded tensors, their wire encoding, and the view ids."""

    tensors: Weights
    encoding: str
    base: str
    """The view the change applies to ('' for whole weights)."""
    view: str
    """The id of the weights the node holds after this message."""


class DeltaBroadcast:
    def __init__(self, encoding: str, view: Weights | None = None) -> None:
        self.encoding = encoding
        """``intN-delta``: the change travels as ``intN``."""
        self.seeded = False
        """The first message's weights are the ones the nodes draw from the run's seed (set by
        a fresh run without ``init_from``)."""
        self.view = view
        self.id = view_id(view) if view is not None else ""
        self._next: Weights | None = None
        self._next_id = ""

    def message(self, weights: Weights) -> Message:
        """The message that brings every node holding the current view to ``weights`` (up to
        rounding); ``commit()`` makes its result the view once it has been sent."""
        if self.view is None and self.seeded:
            self._next = {k: v.float().clone() for k, v in weights.items()}
            self._next_id = view_id(self._next)
            return Message({}, SEED_BROADCAST, "", self._next_id)
        if self.view is None:
            self._next = {k: v.to(torch.bfloat16).float() for k, v in weights.items()}
            self._next_id = view_id(self._next)
            return Message(encode(self._next, "bf16"), "bf16", "", self._next_id)
        quantised = self.encoding.removesuffix(DELTA_SUFFIX)
        change = encode({k: weights[k] - self.view[k] for k in weights}, quantised)
        self._next = apply_delta(self.view, change, quantised)
        self._next_id = view_id(self._next)
        return Message(change, self.encoding, self.id, self._next_id)

    def resync(self) -> Message:
        """The pending view whole, in fp32 (exact), for a node that lacks the base."""
        assert self._next is not None, "message() first"
        return Message(encode(self._next, "fp32"), "fp32", "", self._next_id)

    def commit(self) -> None:
        assert self._next is not None, "message() first"
        self.view, self.id, self._next = self._next, self._next_id, None
