from pathlib import Path

import pytest
import torch

from node.state import InnerState, NodeStateStore
from step_common.errors import StepError


def adam_state() -> dict[str, object]:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    return opt.state_dict()


def test_latest_before_a_round_survives_a_replayed_round(tmp_path: Path) -> None:
    store = NodeStateStore(tmp_path, keep=3)
    assert store.latest_before(1).round == 0 and store.latest_before(1).optimizer is None
    for r in (1, 2, 3):
        store.save(InnerState(r, r * 10, adam_state(), "m"))
    # the coordinator resumes and asks for round 3 again: the node starts from round 2's state
    s = store.latest_before(3)
    assert (s.round, s.node_step, s.model_sha) == (2, 20, "m")
    assert torch.equal(s.optimizer["state"][0]["exp_avg"], adam_state()["state"][0]["exp_avg"])  # type: ignore[index]


def test_only_the_newest_states_are_kept(tmp_path: Path) -> None:
    store = NodeStateStore(tmp_path, keep=2)
    for r in range(1, 6):
        store.save(InnerState(r, r, None))
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == [
        "round-00000004",
        "round-00000005",
    ]


def test_a_tampered_state_is_refused(tmp_path: Path) -> None:
    store = NodeStateStore(tmp_path)
    store.save(InnerState(1, 5, adam_state()))
    (tmp_path / "rounds" / "round-00000001" / "state.json").write_text(
        '{"round": 1, "node_step": 0}'
    )
    with pytest.raises(StepError, match="sha256"):
        store.latest_before(2)


def test_a_damaged_copy_of_the_broadcast_weights_counts_as_none(tmp_path: Path) -> None:
    from node.view_store import ViewStore

    store = ViewStore(tmp_path)
    assert store.load() is None
    store.save("abc", {"w": torch.ones(3)}, '{"tok": 1}')
    held = store.load()
    assert held is not None and held[0] == "abc" and torch.equal(held[1]["w"], torch.ones(3))
    assert held[2] == '{"tok": 1}'
    store.save("def", {"w": torch.zeros(3)}, "{}")  # replaced whole
    assert store.load() is not None and store.load()[0] == "def"  # type: ignore[index]
    (tmp_path / "broadcast" / "weights.safetensors").write_bytes(b"garbage")
    assert store.load() is None  # the coordinator then sends the weights whole
