"""Robust aggregation rules against hand-computed references, and what they resist."""

from __future__ import annotations

import pytest
import torch

from coordinator.config import federation_from_dict
from coordinator.replies import TrainReply, check_train_reply
from coordinator.strategy import Aggregation, make_strategy
from coordinator.strategy.robust import median_of
from step_common.errors import StepError
from step_fed.transport import RawReply


def reply(i: int, values: list[float], tokens: int = 100) -> TrainReply:
    d = torch.tensor(values, dtype=torch.float32)
    return TrainReply(i, f"n{i}", tokens, 0.0, {}, {"x": d}, 0, 0.0, float(d.norm()))


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    rs = [reply(i, v) for i, v in enumerate([[1, 10], [2, 20], [3, -30], [100, 40]])]
    out, _ = Aggregation("trimmed_mean", trim_fraction=0.25).apply(rs, token_rows=False)
    # per coordinate, drop 1 lowest and 1 highest of 4: x0 -> mean(2, 3), x1 -> mean(10, 20)
    assert torch.allclose(out["x"], torch.tensor([2.5, 15.0]))


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    rs = [reply(i, v) for i, v in enumerate([[1.0], [2.0], [4.0], [1000.0]])]
    assert torch.allclose(Aggregation("median").apply(rs, False)[0]["x"], torch.tensor([3.0]))
    rs.append(reply(9, [-5.0]))
    assert torch.allclose(Aggregation("median").apply(rs, False)[0]["x"], torch.tensor([2.0]))


def test_norm_clip_bounds_each_node_by_the_median_norm() -> None:
    rs = [reply(0, [3.0, 4.0]), reply(1, [0.6, 0.8]), reply(2, [300.0, 400.0])]  # norms 5, 1, 500
    out, _ = Aggregation("norm_clip").apply(rs, False)
    # bound = median norm 5: node 2 scaled to norm 5, equal tokens -> mean of the three
    expected = (torch.tensor([3.0, 4.0]) + torch.tensor([0.6, 0.8]) + torch.tensor([3.0, 4.0])) / 3
    assert torch.allclose(out["x"], expected)
    fixed, _ = Aggregation("norm_clip", clip_norm=1.0).apply(rs, False)
    assert torch.allclose(fixed["x"], torch.tensor([0.6, 0.8]))


@pytest.mark.parametrize("rule", ["trimmed_mean", "median", "norm_clip", "filtered_mean"])
def test_two_sign_flipped_scaled_nodes_of_eight_do_not_take_over(rule: str) -> None:
    torch.manual_seed(0)
    honest = torch.randn(64) * 0.1 + 1.0  # the direction the honest nodes agree on
    rs = [reply(i, (honest + 0.05 * torch.randn(64)).tolist()) for i in range(6)]
    rs += [reply(6 + i, (-10 * honest).tolist()) for i in range(2)]
    mean = Aggregation("mean").apply(rs, False)[0]["x"]
    robust, dropped = Aggregation(rule).apply(rs, False)
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(mean, honest, dim=0)) < 0  # the plain mean is turned around
    assert float(cos(robust["x"], honest, dim=0)) > 0.99
    if rule == "filtered_mean":
        assert dropped == ["n6", "n7"]


def test_filtered_mean_drops_random_updates_and_keeps_the_honest_mean() -> None:
    torch.manual_seed(1)
    honest = [torch.randn(256) * 0.1 + 1.0 for _ in range(6)]
    noise = [torch.randn(256) * 10 for _ in range(2)]
    rs = [reply(i, d.tolist()) for i, d in enumerate(honest + noise)]
    out, dropped = Aggregation("filtered_mean", filter_cosine=0.1).apply(rs, False)
    assert dropped == ["n6", "n7"]
    # the honest updates have similar norms: clipping at their median barely changes the mean
    assert torch.allclose(out["x"], torch.stack(honest).mean(0), atol=0.05)


def test_a_node_claiming_more_tokens_than_possible_is_rejected() -> None:
    raw = RawReply(1, "n1", {"round": 1, "num-tokens": 10_000}, {"w": torch.zeros(2)})
    out = check_train_reply(raw, 1, "fp32", {"w": torch.Size([2])}, 0.0, max_tokens=4096)
    assert "claims 10000 training tokens" in getattr(out, "reason", "")


def test_config_picks_the_rule_and_refuses_bad_combinations() -> None:
    s = make_strategy(federation_from_dict({"aggregation": "median"}, "f.yaml"))
    assert s.aggregation.rule == "median"
    with pytest.raises(StepError, match=r"federation\.aggregation"):
        federation_from_dict({"aggregation": "krum"}, "f.yaml")
    with pytest.raises(StepError, match="trim_fraction"):
        federation_from_dict({"trim_fraction": 0.5}, "f.yaml")
    with pytest.raises(StepError, match="central DP clips"):
        federation_from_dict(
            {"aggregation": "median", "central_dp_noise": 1.0, "central_dp_clip": 1.0}, "f.yaml"
        )


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 7, 16])
def test_the_median_is_the_middle_of_the_sorted_values_bit_for_bit(nodes: int) -> None:
    """kthvalue (no sorted copy of every node's tensor) gives the sort's median exactly."""
    stacked = torch.randn(nodes, 40, 3, generator=torch.Generator().manual_seed(nodes))
    values = stacked.sort(dim=0).values
    expected = (values[(nodes - 1) // 2] + values[nodes // 2]) / 2
    assert torch.equal(median_of(stacked), expected)
