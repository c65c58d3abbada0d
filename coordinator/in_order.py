"""Replies handed on in a fixed order, whatever order they arrive in.

The round loop folds each update into a running sum (coordinator/strategy/fold.py) and float
sums depend on their order, so the order is fixed: node-name order, as the coordinator sorted
the replies before it streamed them. When the names of the nodes asked are known up front (a
deployment: the registry's enrolled names; in-process transports), a reply is handed on as soon
as every node before it has answered (or been rejected); one that overtakes them waits, still
encoded. A reply whose predecessors never answer waits for the end of the round. Where names
are known only from the replies themselves (Flower's simulation engine), every reply waits for
the end and they are handed on sorted by (name, node id), as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class InOrder(Generic[T]):
    def __init__(
        self,
        order: list[int] | None,
        key: Callable[[T], Any],
        park: Callable[[T], T] = lambda item: item,
    ) -> None:
        """``order``: the node ids asked, in the order their items are handed on (None: not
        known before the replies); ``key``: the sort key of an item, for the ones handed on at
        the end when the order is not known; ``park``: what an item that has to wait is kept
        as (coordinator/spill.py: on disk beyond a memory budget)."""
        self.order = deque(order) if order is not None else None
        self.key, self.park = key, park
        self.waiting: dict[int, T | None] = {}
        """Node id -> its item (None: the node answered, but nothing of it is handed on)."""
        self.most_waiting = 0
        """The most items that waited at once (bench/coordinator_memory.py reports it)."""

    def put(self, node_id: int, item: T | None) -> list[T]:
        """Node ``node_id``'s item (None for a rejected reply); returns the items whose turn has
        come, in order."""
        self.waiting[node_id] = item
        ready: list[T] = []
        while self.order and self.order[0] in self.waiting:
            done = self.waiting.pop(self.order.popleft())
            if done is not None:
                ready.append(done)
        if item is not None and node_id in self.waiting:
            self.waiting[node_id] = self.park(item)
        held = sum(v is not None for v in self.waiting.values())
        self.most_waiting = max(self.most_waiting, held)
        return ready

    def rest(self) -> list[T]:
        """At the end of the round: the items still waiting, in order (the nodes before them
        never answered)."""
        pending = {n: v for n, v in self.waiting.items() if v is not None}
        self.waiting = {}
        if self.order is None:
            return sorted(pending.values(), key=self.key)
        rank = {n: i for i, n in enumerate(self.order)}
        # a node not asked (none of the transports here answers for one) goes last
        ids = sorted(pending, key=lambda n: (rank.get(n, len(rank)), n))
        return [pending[n] for n in ids]
