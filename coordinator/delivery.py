"""Delivering one message round over Flower's Grid, with a second chance for restarted nodes.

Flower hands a message to a node once. A node that crashes after taking it (kill -9, a power
cut, an out-of-memory kill) never answers it, and when it comes back, under the same key and
node id, nothing is waiting for it: without help the round would wait out its timeout and go
on without that node, or fail when ``min_nodes`` counts every node.

So the delivery watches for two signs that a node lost its message:

- the SuperLink's ``NODE_UNAVAILABLE`` error reply: the node stopped sending heartbeats
  (Flower 1.39: none for 2 x 30 s), and
- a new session of the node (``sessions``: node id -> when it last activated, from the Control
  API in a deployment): it was let in again, so the process that took the message is gone.
  This catches a restart the first sign misses when the node is back before the next look.

A node that lost its message gets ``timeout_s`` to be connected again and is then sent the same
message again (at most ``RESENDS`` times per message round); its reply counts like any other.
The round's timeout starts again for it: a restart costs the round that node's training time
once more, never the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

log = logging.getLogger("step.coordinator")

Sessions = Callable[[], dict[int, str] | None]
"""Node id -> a value that changes each time the node is let in (its activation time); None
when it cannot be looked up this time."""
RESENDS = 2
POLL_S = 1.0
"""Between two looks at the replies (Flower's own ``send_and_receive`` waits 3 s)."""
SESSION_CHECK_S = 2.0


@dataclass
class Delivery:
    grid: Grid
    make: Callable[[int], Message]
    """The message for one node id (called again for a resend: a message is sent once)."""
    timeout_s: float
    connected: Callable[[], list[int]]
    sessions: Sessions | None = None
    name_of: Callable[[int], str] = str
    pending: dict[str, int] = field(default_factory=dict)
    """Message id -> node id, of the messages not answered yet."""
    due: dict[int, float] = field(default_factory=dict)
    """Node id -> when its reply (pending) or its return (lost) is given up on."""
    lost: dict[int, Message | None] = field(default_factory=dict)
    """Node id -> its NODE_UNAVAILABLE reply (None: seen by a new session): waiting for it."""
    resends: dict[int, int] = field(default_factory=dict)
    arrived: list[tuple[int, Message]] = field(default_factory=list)
    """Replies pulled and not yet handed on."""
    seen: dict[int, str] = field(default_factory=dict)
    """Node id -> its session when last looked at (or when its message was last sent)."""

    def run(self, node_ids: list[int]) -> Iterator[tuple[int, Message]]:
        """(node id, its reply or the error Flower made for it), as the replies arrive; a node
        with no reply in time is absent. Replies are pulled one at a time and each is handed on
        before the next is pulled, so one reply at a time is held here."""
        self.seen = self._look() or {}
        self._push(node_ids)
        checked = time.monotonic()
        while self.pending or self.lost:
            self._pull()
            while self.arrived:  # pull the others while replies keep coming
                yield from self._hand_on()
                self._pull()
            if self.sessions and time.monotonic() - checked >= SESSION_CHECK_S:
                self._restarts()
                checked = time.monotonic()
            self._resend_returned()
            self._give_up()
            yield from self._hand_on()
            if self.pending or self.lost:
                time.sleep(POLL_S)

    def _hand_on(self) -> Iterator[tuple[int, Message]]:
        while self.arrived:
            yield self.arrived.pop(0)

    def _push(self, node_ids: list[int]) -> None:
        ids = list(self.grid.push_messages([self.make(n) for n in node_ids]))
        for node, message_id in zip(node_ids, ids, strict=True):
            if message_id:  # None: the SuperLink did not take it (Flower logs why)
                self.pending[message_id] = node
                self.due[node] = time.monotonic() + self.timeout_s

    def _pull(self) -> None:
        """One reply at a time (Flower's ``pull_messages`` inflates every ready reply it is
        asked for at once: a whole update per node)."""
        for message_id in list(self.pending):
            for msg in self.grid.pull_messages([message_id]):
                node = self.pending.pop(msg.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if _unavailable(msg) and self.resends.get(node, 0) < RESENDS:
                    self._lose(node, msg, "stopped sending heartbeats")
                else:
                    self.arrived.append((node, msg))
            if self.arrived:
                return  # hand this one on before pulling the next

    def _look(self) -> dict[int, str] | None:
        return self.sessions() if self.sessions is not None else None

    def _restarts(self) -> None:
        """Nodes with a message pending that were let in again since it was sent."""
        now = self._look()
        if now is None:
            return
        for message_id, node in list(self.pending.items()):
            if now.get(node, "") != self.seen.get(node, "") and self.resends.get(node, 0) < RESENDS:
                del self.pending[message_id]
                self._lose(node, None, "restarted")
        self.seen = now

    def _lose(self, node: int, reply: Message | None, how: str) -> None:
        self.lost[node] = reply
        self.due[node] = time.monotonic() + self.timeout_s
        log.warning("%s %s while its message was out: waiting up to %.0f s for it to be "
                    "connected again, then sending the message again", self.name_of(node), how,
                    self.timeout_s)  # fmt: skip

    def _resend_returned(self) -> None:
        if not self.lost:
            return
        online = set(self.connected())
        back = [n for n in self.lost if n in online]
        for node in back:
            del self.lost[node]
            self.resends[node] = self.resends.get(node, 0) + 1
            log.warning("%s is connected again: sent it the same message again (resend %d of "
                        "%d)", self.name_of(node), self.resends[node], RESENDS)  # fmt: skip
        if back:
            # The session the message goes to: a later change is another restart.
            self.seen.update({n: v for n, v in (self._look() or {}).items() if n in back})
            self._push(back)

    def _give_up(self) -> None:
        now = time.monotonic()
        for node, reply in list(self.lost.items()):
            if now > self.due[node]:
                del self.lost[node]
                if reply is not None:
                    self.arrived.append((node, reply))
        for message_id, node in list(self.pending.items()):
            if now > self.due[node]:
                del self.pending[message_id]


def _unavailable(msg: Message) -> bool:
    return msg.has_error() and msg.error.code == ErrorCode.NODE_UNAVAILABLE
