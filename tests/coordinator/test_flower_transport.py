"""The deployed round loop addresses enrolled nodes only and uses only their replies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.flower_transport import GridTransport
from step_model import protocol as P

ENROLLED = {11: "athens", 22: "tallinn"}
MALLORY = 99  # registered at the SuperLink behind the admin's back


class FakeGrid:
    """Answers every message; records who was addressed."""

    def __init__(self, connected: list[int], revoke_during_round: int | None = None) -> None:
        self.connected = connected
        self.addressed: list[int] = []
        self.revoke = revoke_during_round

    def get_node_ids(self) -> Iterable[int]:
        return list(self.connected)

    def send_and_receive(self, messages: Iterable[Message], timeout: float) -> list[Message]:
        replies = []
        for m in messages:
            self.addressed.append(m.metadata.dst_node_id)
            info = ConfigRecord({P.NODE_NAME: "claims-anything"})
            TaskIdentity.node_id = m.metadata.dst_node_id  # the reply comes from that node
            replies.append(Message(RecordDict({P.NODE_INFO: info}), reply_to=m))
        if self.revoke is not None:
            ENROLLED_NOW.pop(self.revoke, None)
        return replies


ENROLLED_NOW: dict[int, str] = {}


@pytest.fixture(autouse=True)
def _in_a_run() -> Iterator[None]:
    """Flower's Message needs the identity a ServerApp process has."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 3
    yield
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None


def _name_of(node_id: int) -> str | None:
    return ENROLLED_NOW.get(node_id)


def test_unenrolled_nodes_are_never_addressed() -> None:
    ENROLLED_NOW.clear()
    ENROLLED_NOW.update(ENROLLED)
    grid = FakeGrid([11, 22, MALLORY])
    transport = GridTransport(grid, timeout_s=5, enrolled=_name_of)  # type: ignore[arg-type]
    ids = transport.node_ids(minimum=2, timeout_s=5)
    assert ids == [11, 22]
    replies = transport.send("train", ids, {"w": torch.zeros(1)}, {})
    assert MALLORY not in grid.addressed
    assert sorted(r.node for r in replies) == ["athens", "tallinn"]  # enrolled names, not claims


def test_reply_of_a_node_revoked_mid_round_is_dropped() -> None:
    ENROLLED_NOW.clear()
    ENROLLED_NOW.update(ENROLLED)
    grid = FakeGrid([11, 22], revoke_during_round=22)
    transport = GridTransport(grid, timeout_s=5, enrolled=_name_of)  # type: ignore[arg-type]
    replies = transport.send("train", [11, 22], {"w": torch.zeros(1)}, {})
    assert [r.node for r in replies] == ["athens"]


def test_simulation_addresses_everyone() -> None:
    grid = FakeGrid([1, 2, 3])
    transport = GridTransport(grid, timeout_s=5)  # type: ignore[arg-type]
    assert transport.node_ids(minimum=3, timeout_s=5) == [1, 2, 3]
