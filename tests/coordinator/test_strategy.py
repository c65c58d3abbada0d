import pytest
import torch

from coordinator.replies import Rejection, TrainReply, check_train_reply
from coordinator.strategy import DiLoCo, FedAvg
from coordinator.strategy.fold import weighted_mean_delta
from step_fed import protocol as P
from step_fed.protocol import EMBEDDING_WEIGHT, OUTPUT_WEIGHT
from step_fed.transport import RawReply


def test_diloco_matches_torch_sgd_with_nesterov() -> None:
    torch.manual_seed(0)
    w = {"a": torch.randn(4, 3), "b": torch.randn(3)}
    ref = {k: torch.nn.Parameter(v.clone()) for k, v in w.items()}
    sgd = torch.optim.SGD(ref.values(), lr=0.7, momentum=0.9, nesterov=True)
    outer = DiLoCo(lr=0.7, momentum=0.9)
    for _ in range(4):
        delta = {k: torch.randn_like(v) for k, v in w.items()}
        w = outer.step(w, delta)
        for k, p in ref.items():
            p.grad = delta[k].clone()
        sgd.step()
    for k in w:
        assert torch.allclose(w[k], ref[k].detach(), atol=1e-6)


def test_diloco_state_round_trips() -> None:
    a, b = DiLoCo(), DiLoCo()
    a.step({"x": torch.ones(2)}, {"x": torch.ones(2)})
    b.load_state_dict(a.state_dict())
    # the step is in place: each gets its own copy of the weights
    after_a = a.step({"x": torch.ones(2)}, {"x": torch.ones(2)})["x"]
    after_b = b.step({"x": torch.ones(2)}, {"x": torch.ones(2)})["x"]
    assert torch.equal(after_a, after_b) and not torch.equal(after_a, torch.ones(2))


def test_the_outer_steps_update_the_weights_in_place_with_the_same_bits() -> None:
    """In place saves a model copy at the coordinator's peak; the bits are those of w - x."""
    torch.manual_seed(0)
    w, d = {"x": torch.randn(64)}, {"x": torch.randn(64)}
    expected = w["x"] - 0.7 * (d["x"] + 0.9 * d["x"])
    held = w["x"]
    assert DiLoCo(lr=0.7, momentum=0.9).step(w, d)["x"] is held
    assert torch.equal(held, expected)
    w2 = {"x": torch.randn(64)}
    expected = w2["x"] - d["x"]
    assert torch.equal(FedAvg().step(w2, d)["x"], expected)


def test_the_token_rows_take_their_own_outer_lr() -> None:
    """outer_lr_rows: the embedding and the output head step with row_lr, the body with lr,
    each with its own momentum buffer; 0 keeps lr for all (the state records both)."""
    torch.manual_seed(0)
    names = (EMBEDDING_WEIGHT, OUTPUT_WEIGHT, "layers.0.attention.wq.weight")
    w = {k: torch.randn(4, 3) for k in names}
    plain, rows = DiLoCo(lr=1.0, momentum=0.5), DiLoCo(lr=1.0, momentum=0.5, row_lr=1.5)
    wp, wr = {k: v.clone() for k, v in w.items()}, {k: v.clone() for k, v in w.items()}
    for _ in range(3):
        delta = {k: torch.randn_like(v) for k, v in w.items()}
        wp, wr = plain.step(wp, delta), rows.step(wr, delta)
    body = "layers.0.attention.wq.weight"
    assert torch.equal(wp[body], wr[body])
    for k in (EMBEDDING_WEIGHT, OUTPUT_WEIGHT):  # same momentum, 1.5x each step
        assert torch.allclose(w[k] - wr[k], 1.5 * (w[k] - wp[k]), atol=1e-6)
    assert DiLoCo(lr=0.7).row_lr == 0.7 and rows.state_dict()["row_lr"] == 1.5


def test_fedavg_of_token_weighted_deltas_is_the_weighted_mean_of_models() -> None:
    g = {"x": torch.tensor([1.0, 1.0])}
    locals_ = [torch.tensor([0.0, 2.0]), torch.tensor([3.0, 5.0])]
    replies = [
        TrainReply(i, f"n{i}", tokens, 0.0, {}, {"x": g["x"] - loc}, 0, 0.0, 0.0)
        for i, (tokens, loc) in enumerate(zip((300, 100), locals_, strict=True))
    ]
    new = FedAvg().step(g, weighted_mean_delta(replies))
    assert torch.allclose(new["x"], 0.75 * locals_[0] + 0.25 * locals_[1])


def test_token_rows_are_averaged_over_the_nodes_that_saw_the_token() -> None:
    vocab, dim = 4, 2
    names = ("model.embed_tokens.weight", "lm_head.weight")

    def reply(i: int, value: float, counts: list[int]) -> TrainReply:
        delta = {n: torch.full((vocab, dim), value) for n in names}
        delta["other"] = torch.full((3,), value)
        c = torch.tensor(counts, dtype=torch.int32)
        return TrainReply(i, f"n{i}", 100, 0.0, {}, delta, 0, 0.0, 0.0, c)

    # token 0: only node a saw it; token 1: both, 3:1; token 2: only b; token 3: nobody
    a, b = reply(0, 1.0, [5, 3, 0, 0]), reply(1, 3.0, [0, 1, 7, 0])
    plain = weighted_mean_delta([a, b])
    rows = weighted_mean_delta([a, b], token_rows=True)
    assert torch.allclose(plain["model.embed_tokens.weight"], torch.full((vocab, dim), 2.0))
    for name in names:
        assert rows[name][:, 0].tolist() == [1.0, 1.5, 3.0, 2.0]
    assert torch.equal(rows["other"], plain["other"])  # shared weights: the plain mean


@pytest.mark.parametrize("level", [1, 2])
def test_seen_rows_arrive_in_place_and_average_as_the_full_update(level: int) -> None:
    """A node that sends only the rows it saw (round config seen_rows: 1 the embedding, 2 also
    the head) is put back in place; with token rows the mean is the full one on every row some
    node saw, and rows nobody saw stay (a mean of zeros)."""
    vocab, dim = 6, 3
    shapes = {EMBEDDING_WEIGHT: torch.Size((vocab, dim)), OUTPUT_WEIGHT: torch.Size((vocab, dim))}
    names = P.SEEN_ROWS[level]
    torch.manual_seed(0)
    counts = [torch.tensor(c, dtype=torch.int32) for c in ([4, 0, 2, 0, 0, 1], [0, 3, 5, 0, 0, 0])]
    full, sparse = [], []
    for i, c in enumerate(counts):
        delta = {k: torch.randn(s) for k, s in shapes.items()}
        metrics = {P.M_ROUND: 1, P.M_NUM_TOKENS: 100}
        seen = {**delta, **{n: delta[n][c > 0] for n in names}}
        for wire, out, flag in ((delta, full, 0), (seen, sparse, level)):
            raw = RawReply(i, f"n{i}", metrics, {**wire, P.TOKEN_COUNTS: c})
            checked = check_train_reply(raw, 1, "fp32", shapes, 0.0, seen_rows=flag)
            assert isinstance(checked, TrainReply), checked
            out.append(checked)
        for n in names:
            assert torch.equal(sparse[-1].delta[n][c == 0], torch.zeros(int((c == 0).sum()), dim))
            assert torch.equal(sparse[-1].delta[n][c > 0], delta[n][c > 0])
    want = weighted_mean_delta(full, token_rows=True)
    got = weighted_mean_delta(sparse, token_rows=True)
    someone = (counts[0] + counts[1]) > 0
    for n in names:
        assert torch.allclose(got[n][someone], want[n][someone])
        assert torch.equal(got[n][~someone], torch.zeros(2, dim))
    if level == 1:
        assert torch.equal(got[OUTPUT_WEIGHT], want[OUTPUT_WEIGHT])  # the head travels whole


def test_a_seen_rows_reply_with_the_wrong_number_of_rows_is_rejected() -> None:
    shapes = {EMBEDDING_WEIGHT: torch.Size((4, 2))}
    counts = torch.tensor([1, 0, 0, 2], dtype=torch.int32)
    raw = RawReply(0, "n0", {P.M_ROUND: 1, P.M_NUM_TOKENS: 10},
                   {EMBEDDING_WEIGHT: torch.zeros(4, 2), P.TOKEN_COUNTS: counts})  # fmt: skip
    out = check_train_reply(raw, 1, "fp32", shapes, 0.0, seen_rows=1)
    assert isinstance(out, Rejection) and "expected" in out.reason
