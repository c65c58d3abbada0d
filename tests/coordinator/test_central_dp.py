"""Central DP: per-node clipping, the noisy equal-weight mean, and accounting over rounds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant

from coordinator.config import federation_from_dict, load_federation_config
from coordinator.replies import TrainReply
from coordinator.rounds import RoundRunner
from coordinator.strategy import CentralDP, DiLoCo, FedAvg, make_strategy
from step_common.errors import StepError
from tests.local_federation import LocalTransport, write_sim_config


def reply(i: int, delta: torch.Tensor, tokens: int = 100) -> TrainReply:
    return TrainReply(i, f"n{i}", tokens, 0.0, {}, {"x": delta}, 0, 0.0, float(delta.norm()))


def test_updates_are_clipped_to_c_and_averaged_with_equal_weights() -> None:
    # norms 5 and 0.5, C = 1: the first is scaled to norm 1, the second kept; token counts
    # (900 vs 100) do not weigh in, which keeps one institution's influence bounded by C.
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    dp = CentralDP(FedAvg(), noise_multiplier=0.0, clip_norm=1.0, delta=1e-5, seed=0)
    mean = dp.aggregate([reply(0, a, 900), reply(1, b, 100)], token_rows=True, sample_rate=1.0)
    assert torch.allclose(mean["x"], (a / 5 + b) / 2)
    assert dp.clipped == ["n0"]


def test_the_noise_on_the_sum_has_std_sigma_c() -> None:
    n, sigma, clip = 4, 0.8, 2.0
    zero = torch.zeros(200_000)
    dp = CentralDP(FedAvg(), noise_multiplier=sigma, clip_norm=clip, delta=1e-5, seed=1)
    mean = dp.aggregate([reply(i, zero) for i in range(n)], token_rows=False, sample_rate=1.0)
    # mean = noise / n, so n * mean has std sigma * C
    assert float((mean["x"] * n).std()) == pytest.approx(sigma * clip, rel=0.01)


def test_epsilon_composes_over_rounds_and_survives_a_checkpoint() -> None:
    dp = CentralDP(DiLoCo(), noise_multiplier=1.2, clip_norm=1.0, delta=1e-5, seed=0)
    for _ in range(5):
        dp.aggregate([reply(0, torch.ones(3))], token_rows=False, sample_rate=1.0)
    ref = RDPAccountant()
    for _ in range(5):
        ref.step(noise_multiplier=1.2, sample_rate=1.0)
    assert dp.epsilon() == pytest.approx(ref.get_epsilon(1e-5))
    restored = CentralDP(DiLoCo(), noise_multiplier=1.2, clip_norm=1.0, delta=1e-5)
    restored.load_state_dict(dp.state_dict())
    assert restored.epsilon() == dp.epsilon() and math.isfinite(dp.epsilon())


def test_config_turns_it_on_around_the_chosen_strategy() -> None:
    cfg = federation_from_dict({"central_dp_noise": 1.0, "central_dp_clip": 0.5}, "f.yaml")
    strategy = make_strategy(cfg)
    assert isinstance(strategy, CentralDP) and isinstance(strategy.inner, DiLoCo)
    with pytest.raises(StepError, match="central_dp_clip"):
        federation_from_dict({"central_dp_noise": 1.0}, "f.yaml")
    with pytest.raises(StepError, match="central_dp_delta"):
        federation_from_dict({"central_dp_delta": 0.0}, "f.yaml")


def test_round_records_keep_only_what_central_dp_releases(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """No unclipped norm, no clip flags, no exact norm in a rejection, no training loss."""
    insts = [{"name": "a", "languages": {"el": 1.0}}, {"name": "b", "languages": {"et": 1.0}}]
    cfg_file = write_sim_config(tmp_path / "f.yaml", tiny_corpus, insts, rounds=1,
                                central_dp_noise=0.5, central_dp_clip=1.0,
                                max_update_norm=1e-9, min_nodes=1)  # fmt: skip
    run = tmp_path / "r"
    runner = RoundRunner(load_federation_config(cfg_file), run, LocalTransport(cfg_file, run, 2))
    # every update is over the tiny bound: nothing to commit, and no reason quotes a norm
    with pytest.raises(StepError, match=r"update norm exceeds federation\.max_update_norm"):
        runner.train_round(1)
    cfg_file = write_sim_config(tmp_path / "g.yaml", tiny_corpus, insts, rounds=1,
                                central_dp_noise=0.5, central_dp_clip=1.0)  # fmt: skip
    runner = RoundRunner(load_federation_config(cfg_file), tmp_path / "s",
                         LocalTransport(cfg_file, tmp_path / "s", 2))  # fmt: skip
    record = runner.train_round(1)
    assert "update_norm" not in record and "central_dp_clipped" not in record
    assert record["loss"] is None and record["epsilon_central"] > 0
