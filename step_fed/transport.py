"""What the round loop talks through: a ``Transport`` delivers one message per node and hands
back the replies as plain Python (``RawReply``), one at a time as they arrive, so that the
round loop can fold each update and drop it before the next one comes. Flower's Grid in a
deployment and in step-sim (coordinator/flower_transport.py), a function call per node in
tests and sweeps (step_sim/local_transport.py); the round loop (coordinator/rounds.py) knows
only this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

Kind = Literal["train", "evaluate", "secagg_keys", "secagg_shares", "secagg_input", "secagg_reveal"]
"""What a message asks: train, evaluate, or a stage of a secure round (protocol.SECAGG_STAGES:
Flower message type ``train.<kind>``)."""
Weights = dict[str, torch.Tensor]
Extra = Mapping[int, Mapping[str, Any]]
"""Per node id: what its message carries besides the common config (a secure round's stage
record: the keys and shares relayed to that node)."""


def message_type(kind: Kind) -> str:
    """The Flower message type of ``kind``."""
    return kind if kind in ("train", "evaluate") else f"train.{kind}"


@dataclass
class RawReply:
    node_id: int
    node: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: Weights = field(default_factory=dict)
    error: str | None = None
    error_code: int | None = None
    """The protocol's ERR_* code of an error reply."""
    info: dict[str, str] = field(default_factory=dict)
    """The reply's node-info texts (the node's name claim, a signed epsilon report)."""
    secagg: dict[str, Any] = field(default_factory=dict)
    """A secure round's stage answer (protocol.SECAGG record: texts, numbers, bytes)."""


class Transport(Protocol):
    resent: list[str]
    """Nodes sent a message again since this was last cleared (they restarted mid-round)."""

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        """Connected nodes, waiting up to ``timeout_s`` for at least ``minimum``."""
        ...

    def send(
        self,
        kind: Kind,
        node_ids: list[int],
        weights: Weights,
        config: dict[str, Any],
        extra: Extra | None = None,
    ) -> Iterable[RawReply]:
        """Send one message per node; the replies as they arrive, in any order (missing ones
        are simply absent). The caller reads them to the end. ``extra[node]``: that node's
        protocol.SECAGG record."""
        ...

    def name_of(self, node_id: int) -> str | None:
        """The node's name where the transport knows it (enrolled name, institution)."""
        ...
