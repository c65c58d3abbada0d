"""The int8-delta broadcast (coordinator/broadcast.py, node/view_store.py): half the download
of bf16 weights, the same training, nodes that lack the base resynchronised in the same round,
and an exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import node.client_app as node_app
from coordinator.broadcast import DeltaBroadcast
from coordinator.rounds import RoundRunner
from step_fed.update_codec import QUANTISED, apply_delta, decode, encode, encoded_bytes, view_id
from step_model.config import ModelConfig
from tests.coordinator.test_rounds import run


@pytest.mark.parametrize("encoding", ["int8-delta", "int4-delta"])
def test_error_feedback_keeps_the_view_within_one_rounding_of_the_weights(encoding: str) -> None:
    torch.manual_seed(0)
    weights = {"w": torch.randn(64, 32)}
    b = DeltaBroadcast(encoding)
    quantised = encoding.removesuffix("-delta")
    first = b.message(weights)
    assert first.encoding == "bf16" and first.base == ""
    held = decode(first.tensors, "bf16", {"w": torch.Size([64, 32])})  # what a node keeps
    assert view_id(held) == b.id
    for _ in range(20):  # small steps, each rounded on the way down
        weights = {"w": weights["w"] - 1e-3 * torch.randn(64, 32)}
        msg = b.message(weights)
        assert msg.encoding == encoding and msg.base == view_id(held)
        held = apply_delta(held, msg.tensors, quantised)  # the node's side
        assert view_id(held) == msg.view == b.id  # both sides hold the same bits
        step = (weights["w"] - held["w"]).abs().amax(dim=1)
        # the residual is at most half a step of the last change: errors do not pile up
        assert float(step.max()) < 1e-3 * 6 / QUANTISED[quantised]


def test_ternary_error_feedback_does_not_pile_up() -> None:
    """int2 clips values above the row's mean |x|: the clipped part waits in the residual, and
    the residual stays bounded (its scale grows with it) instead of growing round after round."""
    torch.manual_seed(0)
    weights = {"w": torch.randn(64, 32)}
    b = DeltaBroadcast("int2-delta")
    b.message(weights)
    gaps = []
    for _ in range(60):
        weights = {"w": weights["w"] - 1e-3 * torch.randn(64, 32)}
        b.message(weights)
        assert b.view is not None
        gaps.append(float((weights["w"] - b.view["w"]).norm()))
    one_step = 1e-3 * (64 * 32) ** 0.5
    assert max(gaps[30:]) < 3 * one_step
    assert max(gaps[30:]) < 1.5 * max(gaps[:30])


def test_int8_delta_halves_the_download_and_trains_like_bf16(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    bf16 = run(tmp_path, tiny_corpus, "bf16", rounds=3, broadcast_encoding="bf16")
    delta = run(tmp_path, tiny_corpus, "delta", rounds=3, broadcast_encoding="int8-delta")
    a, b = bf16.run(), delta.run()
    rounds = [[h for h in r.history if h["kind"] == "round"] for r in (bf16, delta)]
    text = len(delta.round_config(2).model_json)  # a change comes without the tokenizer
    tokenizer = len(delta.round_config(1).tokenizer)
    # round 1: bf16 sends the weights whole, the delta broadcast none (the nodes draw them)
    assert rounds[0][0]["bytes_down"] == 2 * (2 * delta.params + tokenizer + text)
    assert rounds[1][0]["bytes_down"] == 2 * (tokenizer + text)
    change = encoded_bytes(encode(delta.weights, "int8"))
    for r16, r8 in zip(rounds[0][1:], rounds[1][1:], strict=True):
        assert r8["bytes_down"] < 0.6 * r16["bytes_down"]  # 1 byte + row scales vs 2 bytes
        assert r8["bytes_down"] == 2 * (change + text)
        assert r8["resynced"] == []
    assert abs(a["mean_bpb"] - b["mean_bpb"]) < 0.01
    for name in ("hellas", "baltic"):  # each node keeps the weights it was last sent
        assert (tmp_path / "delta" / "nodes" / name / "broadcast" / "view.json").is_file()


@pytest.mark.parametrize("lost", ["broadcast", "broadcast/tokenizer.json"])
def test_a_node_that_lost_its_copy_is_sent_the_weights_whole(
    tiny_corpus: Path, tmp_path: Path, lost: str
) -> None:
    straight = run(tmp_path, tiny_corpus, "s", rounds=3, broadcast_encoding="int8-delta")
    straight.run()
    lossy = run(tmp_path, tiny_corpus, "l", rounds=3, broadcast_encoding="int8-delta")
    lossy.train_round(1)
    gone = tmp_path / "l" / "nodes" / "baltic" / lost
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    second = lossy.train_round(2)
    assert second["resynced"] == ["baltic"] and second["nodes"] == 2
    assert lossy.train_round(3)["resynced"] == []
    for k, v in straight.weights.items():  # the resent copy is exact: the same training
        assert torch.equal(v, lossy.weights[k]), k


@pytest.mark.parametrize(
    "encodings",
    [{"broadcast_encoding": "int8-delta"},
     {"broadcast_encoding": "top8-sign-delta", "update_encoding": "top4-int4"}],
)  # fmt: skip
def test_resume_with_a_delta_broadcast_is_exact_even_when_nodes_hold_a_newer_copy(
    tiny_corpus: Path, tmp_path: Path, encodings: dict[str, str]
) -> None:
    """Sparse both ways: the coordinator's residual (weights - view) and the nodes' (their
    error feedback) come back from the checkpoint and the node state: the same bits."""
    fed = {"rounds": 3, **encodings}
    straight = run(tmp_path, tiny_corpus, "straight", **fed)
    straight.run()
    part = run(tmp_path, tiny_corpus, "resumed", **fed)
    for r in (1, 2):
        part.train_round(r)
        part.round = r
        part._save()
    part.train_round(3)  # the nodes now hold round 3's copy; the checkpoint has round 2's
    resumed: RoundRunner = run(tmp_path, tiny_corpus, "resumed", resume=True, **fed)
    resumed.run()
    third = [h for h in resumed.history if h["kind"] == "round"][-1]
    # The resumed coordinator sends round 3's change again; the nodes already hold its result
    # (same content id) and use it: nothing is sent whole.
    assert third["round"] == 3 and third["resynced"] == []
    for k, v in straight.weights.items():
        assert torch.equal(v, resumed.weights[k]), k


def test_nodes_draw_the_first_weights_and_one_that_draws_others_is_sent_them_whole(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh run's first message carries no weights: the nodes draw them from the seed. A
    node whose torch would draw other bits answers that it lacks the base and gets them whole
    (fp32, exact), and the run is the same."""
    straight = run(tmp_path, tiny_corpus, "s", rounds=2, broadcast_encoding="int8-delta")
    straight.run()
    first = next(h for h in straight.history if h["kind"] == "round")
    assert first["resynced"] == []
    drawn = node_app.seeded_weights

    def other_torch(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
        return {k: v + 1e-3 for k, v in drawn(config, seed).items()}

    monkeypatch.setattr(node_app, "seeded_weights", other_torch)
    odd = run(tmp_path, tiny_corpus, "o", rounds=2, broadcast_encoding="int8-delta")
    odd.run()
    first = next(h for h in odd.history if h["kind"] == "round")
    assert sorted(first["resynced"]) == ["baltic", "hellas"]
    assert first["bytes_down"] > 2 * 4 * odd.params  # the weights whole, fp32
    for k, v in straight.weights.items():
        assert torch.equal(v, odd.weights[k]), k
