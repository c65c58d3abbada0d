import torch

from coordinator.replies import TrainReply, weighted_mean_delta
from coordinator.strategy import DiLoCo, FedAvg


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
    w = {"x": torch.ones(2)}
    a.step(w, {"x": torch.ones(2)})
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.step(w, {"x": torch.ones(2)})["x"], b.step(w, {"x": torch.ones(2)})["x"])


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
