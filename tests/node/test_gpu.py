"""The node on a GPU (skipped where none is visible, as in CI): a federation whose nodes train
and evaluate on cuda, one of them with DP-SGD in each Opacus mode, ends where the same run on
the CPU ends, up to bf16 rounding; updates and saved state come back to host memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from coordinator.config import load_federation_config
from coordinator.rounds import RoundRunner
from node import client_app
from node.state import NodeStateStore
from tests.local_federation import LocalTransport, write_sim_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(tmp: Path, corpus: Path, device: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> dict:  # type: ignore[type-arg]
    settings = client_app.node_settings
    monkeypatch.setattr(
        client_app, "node_settings", lambda ctx: dataclasses.replace(settings(ctx), device=device)
    )
    privacy = {"epsilon": 8.0, "delta": 1e-6, "noise_multiplier": 0.5, "mode": mode}
    insts = [
        {"name": "a", "languages": {"el": 1.0}},
        {"name": "b", "languages": {"et": 1.0}, "privacy": privacy},
    ]
    tmp.mkdir()
    cfg_file = write_sim_config(tmp / "s.yaml", corpus, insts, rounds=2)
    run = tmp / "r"
    summary = RoundRunner(
        load_federation_config(cfg_file), run, LocalTransport(cfg_file, run, 2)
    ).run()
    state = NodeStateStore(run / "nodes" / "b").latest_before(3)
    assert state.optimizer is not None
    moments = [
        t for s in state.optimizer["state"].values() for t in s.values() if torch.is_tensor(t)
    ]
    assert all(t.device.type == "cpu" for t in moments)
    assert yaml.safe_load(cfg_file.read_text())["institutions"][1]["privacy"]["mode"] == mode
    return summary


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_federation_on_the_gpu_matches_the_cpu(
    tiny_corpus: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = _run(tmp_path / "gpu", tiny_corpus, "cuda", mode, monkeypatch)
    cpu = _run(tmp_path / "cpu", tiny_corpus, "cpu", mode, monkeypatch)
    assert gpu["rounds"] == cpu["rounds"] == 2
    assert abs(gpu["mean_bpb"] - cpu["mean_bpb"]) < 0.1, (gpu["mean_bpb"], cpu["mean_bpb"])
    assert 0 < gpu["epsilon"]["b"] <= 8.0


def test_dp_sgd_noise_on_the_gpu_comes_from_the_secret_generator() -> None:
    from node.dp_trainer import DPSettings, Records, dp_steps
    from step_fed.secret_rng import secret_generator
    from step_model.config import preset
    from step_model.model import Transformer

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = Transformer(preset("debug").with_vocab(64)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        # q = 1 / 4000: most steps draw no sequence, so the noise-only step runs as well
        records = Records(torch.randint(1, 64, (4000, 16)), {"xx": 4000})
        dp = DPSettings(1.0, 1.0, expected_batch=1, mode="ghost")
        dp_steps(model, opt, records, dp, [0.1] * 4, 0, secret_generator(seed))
        return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()

    a, b = run(1), run(2)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
