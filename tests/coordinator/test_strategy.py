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
