"""The round loop's transport over Flower's Grid (Message API): nodes are Flower SuperNodes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from coordinator.delivery import Delivery, Sessions
from step_common.errors import StepError
from step_fed import protocol as P
from step_fed.transport import Extra, Kind, RawReply, Weights, message_type

log = logging.getLogger("step.coordinator")


NameOf = Callable[[int], str | None]
"""The enrolled name of a node id (deployment), None when unknown (simulation)."""


def raw_from_message(msg: Message, node_id: int, enrolled: NameOf | None = None) -> RawReply:
    """Node ``node_id``'s reply as plain Python: metrics, node name, arrays, or the error it
    reported (or the SuperLink reported for it: such a reply comes from the SuperLink's id).

    In a deployment the name is the one the admin enrolled the node's key under (the node's
    own claim could collide with or impersonate another institution's)."""
    known = enrolled(node_id) if enrolled is not None else None
    if msg.has_error():
        return RawReply(
            node_id,
            known or "",
            error=f"node error {msg.error.code}: {msg.error.reason}",
            error_code=int(msg.error.code),
        )
    content = msg.content
    record = content.get(P.NODE_INFO)
    texts = record.items() if isinstance(record, ConfigRecord) else []
    info = {k: v for k, v in texts if isinstance(v, str)}
    name = known or info.get(P.NODE_NAME, "")
    metrics = content.get(P.METRICS)
    arrays = content.get(P.ARRAYS)
    tensors = {}
    if isinstance(arrays, ArrayRecord):  # each array's bytes dropped once it is a tensor
        tensors = dict(arrays.to_torch_state_dict(keep_input=False))
    metric_values = _scalars(metrics) if isinstance(metrics, MetricRecord) else {}
    stage = content.get(P.SECAGG)
    secagg = dict(stage.items()) if isinstance(stage, ConfigRecord) else {}
    return RawReply(node_id, name, metric_values, tensors, info=info, secagg=secagg)


def message_content(
    weights: Weights | ArrayRecord, config: dict[str, Any], extra: Any = None
) -> RecordDict:
    """A message's records: the weights, the config, and a secure stage's own record."""
    arrays = weights if isinstance(weights, ArrayRecord) else ArrayRecord(weights)
    records: dict[str, Any] = {P.ARRAYS: arrays, P.CONFIG: ConfigRecord(config)}
    if extra is not None:
        records[P.SECAGG] = ConfigRecord(dict(extra))
    return RecordDict(records)


def _scalars(metrics: MetricRecord) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


class GridTransport:
    def __init__(
        self,
        grid: Grid,
        timeout_s: float,
        enrolled: NameOf | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        """``sessions``: when each node was last let in (deployment: the Control API), to
        notice a node that restarted mid-round (delivery.py)."""
        self.grid, self.timeout_s, self.enrolled = grid, timeout_s, enrolled
        self.sessions = sessions
        self.settled = False
        self.resent: list[str] = []

    def connected(self) -> list[int]:
        """The connected node ids this round may address: in a deployment only those of
        enrolled, unrevoked institutions (a key registered at the SuperLink behind the admin's
        back never receives the weights nor gets its update aggregated)."""
        ids = sorted(self.grid.get_node_ids())
        if self.enrolled is None:
            return ids
        foreign = [n for n in ids if self.enrolled(n) is None]
        if foreign:
            log.warning("ignoring node ids that are not enrolled: %s", foreign)
        return [n for n in ids if n not in foreign]

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        """Wait for ``minimum`` nodes, then until the count holds still for a second (nodes
        register one by one when a run starts; a round should not go out half-addressed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            ids = self.connected()
            if len(ids) >= minimum and self.settled:
                return ids
            if len(ids) >= minimum:
                time.sleep(1.0)
                again = self.connected()
                if again == ids:
                    self.settled = True
                    return ids
                continue
            if time.monotonic() > deadline:
                raise StepError(
                    f"only {len(ids)} nodes connected after {timeout_s:.0f} s, "
                    f"federation.min_nodes is {minimum}: start more nodes"
                )
            log.info("waiting for nodes: %d of %d connected", len(ids), minimum)
            time.sleep(2.0)

    def name_of(self, node_id: int) -> str | None:
        return self.enrolled(node_id) if self.enrolled is not None else None

    def send(
        self,
        kind: Kind,
        node_ids: list[int],
        weights: Weights,
        config: dict[str, Any],
        extra: Extra | None = None,
    ) -> Iterator[RawReply]:
        """The replies as they arrive. One ArrayRecord for every node: the serialized weights
        exist once in this process however many nodes they go to (Flower pushes an object
        once per content id; a node's own secure stage record is a separate object)."""
        arrays = ArrayRecord(weights)
        common = message_content(arrays, config)
        mtype = message_type(kind)

        def build(n: int) -> Message:
            content = common if extra is None else message_content(arrays, config, extra.get(n, {}))
            return Message(content, dst_node_id=n, message_type=mtype)

        delivery = Delivery(
            self.grid,
            build,
            self.timeout_s,
            self.connected,
            self.sessions,
            lambda n: self.name_of(n) or f"node {n}",
        )
        for n, message in delivery.run(node_ids):
            if self._usable(n):
                yield raw_from_message(message, n, self.enrolled)
            del message  # the next reply is pulled only after this one is handed on
        self.resent += [self.name_of(n) or f"node {n}" for n in delivery.resends]

    def _usable(self, node_id: int) -> bool:
        """Only replies from nodes still enrolled (one revoked mid-round is not used)."""
        if self.enrolled is not None and self.enrolled(node_id) is None:
            log.warning("dropping the reply of node id %d: not enrolled (or revoked)", node_id)
            return False
        return True
