from pathlib import Path

import pytest
import torch

from coordinator.config import federation_from_dict
from node.state import InnerState, NodeStateStore
from node.trainer import drift_correction, with_error_feedback
from step_common.errors import StepError
from step_fed.protocol import EMBEDDING_WEIGHT, RoundConfig
from step_fed.update_codec import decode, encode
from tests import factories


def round_config(round_: int, drift: int) -> RoundConfig:
    return factories.round_config(round=round_, drift_correction=drift)


def test_the_correction_is_the_global_mean_update_minus_the_own_per_unit_lr() -> None:
    prev = {"w": torch.tensor([1.0, 1.0])}
    now = {"w": torch.tensor([0.8, 1.0])}  # FedAvg moved the first coordinate by 0.2
    own = {"w": torch.tensor([0.5, -0.1])}  # this node had moved it by 0.5 (and the other)
    state = InnerState(3, 30, None, "", {"global": prev, "delta": own, "lr_mass": 0.1})
    corr = drift_correction(round_config(4, 1), state, now)
    assert corr is not None
    assert torch.allclose(corr["w"], torch.tensor([(0.2 - 0.5) / 0.1, (0.0 + 0.1) / 0.1]))


def test_no_correction_when_off_or_when_the_node_missed_the_last_round() -> None:
    state = InnerState(2, 30, None, "", {"global": {}, "delta": {}, "lr_mass": 1.0})
    assert drift_correction(round_config(4, 1), state, {}) is None  # state is from round 2
    assert drift_correction(round_config(3, 0), state, {}) is None


def test_drift_correction_needs_fedavg() -> None:
    with pytest.raises(StepError, match="needs strategy fedavg"):
        federation_from_dict({"drift_correction": True, "strategy": "diloco"}, "cfg.yaml")


def test_a_federation_with_drift_correction_corrects_from_round_two(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    from coordinator.config import load_federation_config
    from coordinator.rounds import RoundRunner
    from node.state import NodeStateStore
    from tests.local_federation import LocalTransport, write_sim_config

    insts = [{"name": "a", "languages": {"el": 1.0}}, {"name": "b", "languages": {"et": 1.0}}]
    cfg_file = write_sim_config(
        tmp_path / "s.yaml", tiny_corpus, insts, rounds=2, strategy="fedavg", drift_correction=True
    )
    runner = RoundRunner(
        load_federation_config(cfg_file),
        tmp_path / "r",
        LocalTransport(cfg_file, tmp_path / "r", 2),
    )
    runner.run()
    state = NodeStateStore(tmp_path / "r" / "nodes" / "a").latest_before(3)
    assert state.round == 2 and state.control is not None
    assert state.control["lr_mass"] > 0 and set(state.control["delta"]) == set(runner.weights)


def test_error_feedback_delays_what_rounding_loses_and_loses_nothing(tmp_path: Path) -> None:
    """Over rounds, what arrives at the coordinator plus the residual the node still holds is
    exactly the sum of the node's updates; the residual survives a restart with the state."""
    torch.manual_seed(0)
    shapes = {"w": torch.Size([8, 16]), "b": torch.Size([16])}
    store = NodeStateStore(tmp_path)
    total = {k: torch.zeros(s) for k, s in shapes.items()}
    arrived = {k: torch.zeros(s) for k, s in shapes.items()}
    for round_ in range(1, 6):
        delta = {k: torch.randn(s) * 1e-3 for k, s in shapes.items()}
        state = store.latest_before(round_)
        encoded, residual = with_error_feedback("int4", _copy(delta), state, "sha")
        assert residual is not None
        store.save(InnerState(round_, 0, None, "sha", None, residual))
        for k in shapes:
            total[k] += delta[k]
            arrived[k] += decode(encoded, "int4", shapes)[k]
    held = store.latest_before(6).residual
    assert held is not None
    for k in shapes:
        assert torch.allclose(arrived[k] + held[k], total[k], atol=1e-7)
        assert float(held[k].abs().max()) < float(total[k].abs().max())  # not piling up


def test_no_error_feedback_without_quantisation_or_across_models() -> None:
    delta = {"w": torch.randn(4, 4)}
    fresh = InnerState(round=0, node_step=0, optimizer=None)
    plain, residual = with_error_feedback("fp32", delta, fresh, "sha")
    assert torch.equal(plain["w"], delta["w"]) and residual is None
    other = InnerState(1, 0, None, "old-model", None, {"w": torch.ones(4, 4)})
    encoded, _ = with_error_feedback("int8", _copy(delta), other, "sha")  # another model's residual
    assert all(torch.equal(encoded[k], v) for k, v in encode(delta, "int8").items())


def test_error_feedback_with_seen_rows_sends_only_those_and_keeps_the_rest_waiting(
    tmp_path: Path,
) -> None:
    """With seen rows, only the embedding rows of the tokens seen travel; what arrives plus
    the residual held is the sum of the changes of the rows seen in each round, and a row's
    residual waits through rounds in which its token is not seen."""
    torch.manual_seed(0)
    vocab, dim = 10, 4
    shapes = {EMBEDDING_WEIGHT: torch.Size([vocab, dim]), "b": torch.Size([dim])}
    store = NodeStateStore(tmp_path)
    total = {k: torch.zeros(s) for k, s in shapes.items()}
    arrived = {k: torch.zeros(s) for k, s in shapes.items()}
    held = {k: torch.zeros(s) for k, s in shapes.items()}
    for round_ in range(1, 7):
        delta = {k: torch.randn(s) * 1e-3 for k, s in shapes.items()}
        seen = torch.rand(vocab) < 0.5
        state = store.latest_before(round_)
        encoded, residual = with_error_feedback(
            "int4", _copy(delta), state, "sha", seen, (EMBEDDING_WEIGHT,)
        )
        assert residual is not None and residual[EMBEDDING_WEIGHT].shape == (vocab, dim)
        sent_shapes = {**shapes, EMBEDDING_WEIGHT: torch.Size([int(seen.sum()), dim])}
        got = decode(encoded, "int4", sent_shapes)  # raises if the wrong rows travelled
        store.save(InnerState(round_, 0, None, "sha", None, residual))
        total["b"] += delta["b"]
        total[EMBEDDING_WEIGHT][seen] += delta[EMBEDDING_WEIGHT][seen]
        arrived["b"] += got["b"]
        arrived[EMBEDDING_WEIGHT][seen] += got[EMBEDDING_WEIGHT]
        # a row not seen this round keeps the residual it had
        assert torch.equal(residual[EMBEDDING_WEIGHT][~seen], held[EMBEDDING_WEIGHT][~seen])
        held = residual
    for k in shapes:
        assert torch.allclose(arrived[k] + held[k], total[k], atol=1e-7)


def _copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tensors.items()}


def test_error_feedback_in_place_has_the_bits_of_the_plain_formula(tmp_path: Path) -> None:
    """The update is encoded and its residual kept in the delta's own memory, one tensor at a
    time, the carried residual read from disk tensor by tensor: the same bytes on the wire and
    the same residual, bit for bit, as  sent = delta + carried; residual = sent - decode(sent)."""
    torch.manual_seed(1)
    shapes = {"w": torch.Size([6, 8]), "b": torch.Size([8])}
    store = NodeStateStore(tmp_path)
    carried = {k: torch.randn(s) * 1e-4 for k, s in shapes.items()}
    store.save(InnerState(1, 0, None, "sha", None, carried))
    state = store.latest_before(2)
    assert state.residual is not None and not isinstance(state.residual, dict)  # read lazily
    delta = {k: torch.randn(s) * 1e-3 for k, s in shapes.items()}
    sent = {k: delta[k] + carried[k] for k in shapes}
    want = encode(sent, "int3")
    arrives = decode(want, "int3", shapes)
    encoded, residual = with_error_feedback("int3", _copy(delta), state, "sha")
    assert residual is not None and list(encoded) == list(want)
    assert all(torch.equal(encoded[k], want[k]) for k in want)
    assert all(torch.equal(residual[k], sent[k] - arrives[k]) for k in shapes)
