"""The deployed round loop addresses enrolled nodes only and uses only their replies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from coordinator import delivery
from coordinator.flower_transport import GridTransport
from step_fed import protocol as P

ENROLLED = {11: "athens", 22: "tallinn"}
MALLORY = 99  # registered at the SuperLink behind the admin's back


class FakeGrid:
    """Answers every message at the first look; records who was addressed.

    ``crash``: node id -> what happens to its first message: "restart" (it takes the message
    and is let in again, unanswered) or "offline" (the SuperLink reports it unavailable; it is
    connected again ``back_after`` looks later); ``never_back`` keeps it away."""

    def __init__(
        self,
        connected: list[int],
        revoke_during_round: int | None = None,
        crash: dict[int, str] | None = None,
        never_back: bool = False,
    ) -> None:
        self.connected = connected
        self.addressed: list[int] = []
        self.revoke = revoke_during_round
        self.crash = dict(crash or {})
        self.never_back = never_back
        self.sessions = {n: "t0" for n in connected}
        self.out: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.connected if self.crash.get(n) != "away"]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for i, m in enumerate(messages):
            self.addressed.append(m.metadata.dst_node_id)
            message_id = f"m{len(self.addressed)}-{i}"
            m.metadata.__dict__["_message_id"] = message_id
            self.out[message_id] = m
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = []
        for message_id in message_ids:
            m = self.out.pop(message_id)
            node = m.metadata.dst_node_id
            fate = self.crash.get(node)
            if fate == "restart":  # took it, died, was let in again: no answer ever comes
                self.crash[node] = "done"
                self.sessions[node] = "t1"
                continue
            if fate == "offline":
                self.crash[node] = "away" if self.never_back else "done"
                error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason="no heartbeat")
                TaskIdentity.node_id = 1  # the SuperLink makes this reply, not the node
                replies.append(Message(error, reply_to=m))
                continue
            info = ConfigRecord({P.NODE_NAME: "claims-anything"})
            TaskIdentity.node_id = node  # the reply comes from that node
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
    replies = list(transport.send("train", ids, {"w": torch.zeros(1)}, {}))
    assert MALLORY not in grid.addressed
    assert sorted(r.node for r in replies) == ["athens", "tallinn"]  # enrolled names, not claims


def test_reply_of_a_node_revoked_mid_round_is_dropped() -> None:
    ENROLLED_NOW.clear()
    ENROLLED_NOW.update(ENROLLED)
    grid = FakeGrid([11, 22], revoke_during_round=22)
    transport = GridTransport(grid, timeout_s=5, enrolled=_name_of)  # type: ignore[arg-type]
    replies = list(transport.send("train", [11, 22], {"w": torch.zeros(1)}, {}))
    assert [r.node for r in replies] == ["athens"]


def test_simulation_addresses_everyone() -> None:
    grid = FakeGrid([1, 2, 3])
    transport = GridTransport(grid, timeout_s=5)  # type: ignore[arg-type]
    assert transport.node_ids(minimum=3, timeout_s=5) == [1, 2, 3]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "POLL_S", 0.01)
    monkeypatch.setattr(delivery, "SESSION_CHECK_S", 0.0)


@pytest.mark.parametrize("fate", ["restart", "offline"])
def test_a_node_that_lost_its_message_is_sent_it_again(quick: None, fate: str) -> None:
    """Killed mid-round and back under the same key: seen by its new session (restart) or by
    the SuperLink's NODE_UNAVAILABLE reply (offline), then sent the message again."""
    ENROLLED_NOW.clear()
    ENROLLED_NOW.update(ENROLLED)
    grid = FakeGrid([11, 22], crash={22: fate})
    transport = GridTransport(grid, timeout_s=5, enrolled=_name_of,  # type: ignore[arg-type]
                              sessions=lambda: dict(grid.sessions))  # fmt: skip
    replies = list(transport.send("train", [11, 22], {"w": torch.zeros(1)}, {}))
    assert grid.addressed == [11, 22, 22]
    assert transport.resent == ["tallinn"]  # the round record names it (`resent`)
    assert [(r.node, r.error) for r in replies] == [("athens", None), ("tallinn", None)]


def test_a_node_that_does_not_come_back_is_reported_unavailable(quick: None) -> None:
    ENROLLED_NOW.clear()
    ENROLLED_NOW.update(ENROLLED)
    grid = FakeGrid([11, 22], crash={22: "offline"}, never_back=True)
    transport = GridTransport(grid, timeout_s=0.2, enrolled=_name_of)  # type: ignore[arg-type]
    replies = list(transport.send("train", [11, 22], {"w": torch.zeros(1)}, {}))
    assert grid.addressed == [11, 22]
    assert replies[1].node == "tallinn"  # named, although the SuperLink sent the reply
    assert replies[1].error_code == ErrorCode.NODE_UNAVAILABLE
