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

``Broadcaster`` is what the round loop sends through: every message of a round goes out through
it (whole weights, or the change through ``DeltaBroadcast`` and the resync of stale nodes), it
keeps the view in the run's checkpoints, and notes for the round's record who was resynced and
who did not reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from coordinator.config import FederationConfig
from step_fed.protocol import DELTA_SUFFIX, ERR_STALE_VIEW, SEED_BROADCAST, RoundConfig
from step_fed.transport import Extra, Kind, RawReply, Transport
from step_fed.update_codec import apply_delta, encode, encoded_bytes, view_id

Weights = dict[str, torch.Tensor]
log = logging.getLogger("step.coordinator")
VIEW_KEY = "broadcast_view"
"""Where a checkpoint's optimizer tree keeps the intN-delta view (beside the strategy state)."""


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

    def message(self, weights: Weights) -> Message:
        """The message that brings every node holding the current view to ``weights`` (up to
        rounding); its result becomes the view at once (the old one is needed only to compute
        the change: a node that did not get the message is resynced from the new one)."""
        base = self.id
        if self.view is None and self.seeded:
            self._take({k: v.float().clone() for k, v in weights.items()})
            return Message({}, SEED_BROADCAST, "", self.id)
        if self.view is None:
            view = {k: v.to(torch.bfloat16).float() for k, v in weights.items()}
            self._take(view)
            return Message(encode(view, "bf16"), "bf16", "", self.id)
        quantised = self.encoding.removesuffix(DELTA_SUFFIX)
        change: Weights = {}
        for k, held in self.view.items():  # one tensor at a time: no whole-model temporaries
            part = encode({k: weights[k] - held}, quantised)
            held.copy_(apply_delta({k: held}, part, quantised)[k])  # the nodes' arithmetic
            change.update(part)
        self.id = view_id(self.view)
        return Message(change, self.encoding, base, self.id)

    def _take(self, view: Weights) -> None:
        self.view, self.id = view, view_id(view)

    def resync(self) -> Message:
        """The view whole, in fp32 (exact), for a node that lacks the base of the change."""
        assert self.view is not None, "message() first"
        return Message(encode(self.view, "fp32"), "fp32", "", self.id)


class Broadcaster:
    """Sends each message of a round to every connected node and collects the replies: the
    weights whole (in the round config's encoding) or, with intN-delta, the change since the
    nodes' view, and the new view whole to the nodes that answer that they lack its base."""

    def __init__(self, cfg: FederationConfig, transport: Transport) -> None:
        self.cfg, self.transport = cfg, transport
        delta = cfg.broadcast_encoding.endswith(DELTA_SUFFIX)
        self.delta = DeltaBroadcast(cfg.broadcast_encoding) if delta else None
        """The nodes' view and the change to it; None when the weights travel whole."""
        self.resynced: list[str] = []
        """Nodes sent the weights whole in the last message round (intN-delta: no base)."""
        self.missing: list[str] = []
        """Nodes asked in the last message round that did not reply in time (stragglers)."""
        self.sent = 0
        """Payload bytes sent in the last message round."""
        self.encode_s = 0.0
        """Seconds spent encoding the last message round's weights."""

    def start_fresh(self, seeded: bool) -> None:
        """A fresh run: ``seeded`` when its first weights are drawn from the run's seed (the
        nodes draw them too, so the first message carries none)."""
        if self.delta is not None:
            self.delta.seeded = seeded

    def restore(self, tree: dict[str, Any] | None) -> dict[str, Any]:
        """Take the view back from a checkpoint's optimizer tree; returns the rest of the tree
        (the strategy's state)."""
        rest = dict(tree or {})
        view = rest.pop(VIEW_KEY, None)
        if self.delta is not None and view is not None:
            self.delta = DeltaBroadcast(self.cfg.broadcast_encoding, view)
        return rest

    def with_view(self, tree: dict[str, Any]) -> dict[str, Any]:
        """The strategy's state ``tree`` plus the view, for the checkpoint (a resumed run then
        sends the same changes as an uninterrupted one)."""
        if self.delta is not None and self.delta.view is not None:
            tree[VIEW_KEY] = self.delta.view
        return tree

    def nodes(self) -> list[int]:
        """The nodes a message round goes to: every connected one (at least ``min_nodes``)."""
        return self.transport.node_ids(self.cfg.min_nodes, self.cfg.round_timeout_s)

    def send(
        self,
        kind: Kind,
        config: RoundConfig,
        weights: Weights,
        node_ids: list[int],
        extra: Extra | None = None,
    ) -> Iterator[RawReply]:
        """Send the round to ``node_ids``; the replies as they arrive. Once they are read to
        the end, ``sent`` holds the payload bytes sent (tensor bytes of the weights as encoded +
        the config's text, per node) and ``missing`` the nodes that did not reply. ``extra``:
        each node's secure-stage record (a secure round's train message)."""
        self.resynced, self.sent = [], 0
        start = time.monotonic()
        replied: set[int] = set()
        raws: Iterable[RawReply]
        if self.delta is not None:
            raws = self._send_delta(kind, config, node_ids, weights, extra)
        else:
            encoded = encode(weights, config.broadcast_encoding)
            self.sent = len(node_ids) * payload_bytes(encoded, config)
            raws = self.transport.send(kind, node_ids, encoded, config.to_wire(), extra)
        self.encode_s = time.monotonic() - start  # _send_delta adds the change's when made
        for r in raws:
            r.node = r.node or self.name(r.node_id)  # an error reply carries no name
            replied.add(r.node_id)
            yield r
            del r  # not held while the next reply is pulled
        self.missing = [self.name(n) for n in node_ids if n not in replied]
        for name in self.missing:
            log.warning("round %d: %s sent no reply within federation.round_timeout_s "
                        "(%.0f s): dropped from the round", config.round, name,
                        self.cfg.round_timeout_s)  # fmt: skip

    def _send_delta(
        self,
        kind: Kind,
        config: RoundConfig,
        node_ids: list[int],
        weights: Weights,
        extra: Extra | None,
    ) -> Iterator[RawReply]:
        """intN-delta: the change since the nodes' view to all; the new view whole, in fp32, to
        those that answer that they lack the base (after the others' replies)."""
        assert self.delta is not None
        start = time.monotonic()
        msg = self.delta.message(weights)
        self.encode_s += time.monotonic() - start
        # A change goes only to nodes that kept the weights, and they kept the tokenizer with
        # them: it travels only with whole weights (the first round, resyncs).
        tokenizer = "" if msg.base else config.tokenizer
        wire = config.model_copy(update={"broadcast_encoding": msg.encoding, "view_base": msg.base,
                                         "view": msg.view, "tokenizer": tokenizer})  # fmt: skip
        self.sent = len(node_ids) * payload_bytes(msg.tensors, wire)
        stale = []
        for r in self.transport.send(kind, node_ids, msg.tensors, wire.to_wire(), extra):
            if r.error_code == ERR_STALE_VIEW:
                stale.append(r.node_id)
            else:
                yield r
            del r
        if stale:
            whole = self.delta.resync()
            wire = config.model_copy(
                update={"broadcast_encoding": whole.encoding, "view": whole.view}
            )
            self.sent += len(stale) * payload_bytes(whole.tensors, wire)
            self.resynced = [self.name(n) for n in stale]
            log.info("round %d: sending the weights whole to %s (they lacked the base of the "
                     "change)", config.round, ", ".join(self.resynced))  # fmt: skip
            yield from self.transport.send(kind, stale, whole.tensors, wire.to_wire(), extra)

    def name(self, node_id: int) -> str:
        """A node's name for reports: its enrolled name where the transport knows it."""
        return self.transport.name_of(node_id) or f"node {node_id}"


def payload_bytes(tensors: Weights, config: RoundConfig) -> int:
    """What one message carries: the tensors as encoded and the config's text."""
    return encoded_bytes(tensors) + len(config.tokenizer) + len(config.model_json)
