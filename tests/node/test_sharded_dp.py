"""DP-SGD on torchrun workers (node/sharded_dp.py), gloo on the CPU: the same clipped update as
the one-device DP-SGD, and noise added once for the node.

The workers run plain SGD (tests/node/sharded_dp_worker.py) so that each step's update is the
gradient Opacus hands the optimizer; worker 0 writes it whole, and it is compared with the
gradient of node/dp_trainer.py's one-device DP-SGD drawing the same sequences.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from node.dp_trainer import DPSGD, Records, make_records
from step_model.checkpoint import seeded_weights
from step_model.model import Transformer
from step_model.tokenizer import ByteTokenizer
from tests.node import sharded_dp_worker as D
from tests.node import sharded_worker as W

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(out: Path, noises: list[float], sharding: str, steps: int, lr: float, seed: int,
              batch: int) -> list[list[dict[str, torch.Tensor]]]:  # fmt: skip
    """Each step's whole gradient on 2 workers, for each noise multiplier."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            str(ROOT / "tests/node/sharded_dp_worker.py"), str(out), ",".join(map(str, noises)),
            sharding, str(steps), str(lr), str(seed), str(batch)]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [[load_file(str(out / f"noise-{n}" / f"grad-{h}.safetensors")) for h in range(steps)]
            for n in noises]  # fmt: skip


def _loss(out: Path, step: int) -> float:
    with safe_open(str(out / "noise-0.0" / f"grad-{step}.safetensors"), "pt") as f:
        return float(f.metadata()["loss"])


def _one_device(
    records: Records, steps: int, lr: float, seed: int | torch.Generator, batch: int
) -> tuple:
    """Each step's gradient and loss of the one-device DP-SGD (noise 0), and every per-sequence
    gradient norm it clipped."""
    model = Transformer(D.config())
    model.load_state_dict(seeded_weights(D.config(), 0), strict=False)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    sgd = DPSGD(model, opt, records, D.dp_settings(0.0, batch), ByteTokenizer().bos_id, gen)
    grads, losses, norms = [], [], []
    for _ in range(steps):
        losses.append(sgd.step(lr))
        # an empty draw steps on the noise alone and leaves no gradient: zero noise here
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for n, p in model.named_parameters()})  # fmt: skip
        norms.append(getattr(sgd.module, "per_sample_gradient_norms", None))
    sgd.close()
    return grads, losses, [n for n in norms if n is not None]


def _draw_sizes(records: Records, steps: int, seed: int, batch: int) -> list[int]:
    """How many sequences each step's Poisson draw takes (the workers' generator)."""
    gen, q = torch.Generator().manual_seed(seed), batch / len(records)
    return [int((torch.rand(len(records), generator=gen) < q).sum()) for _ in range(steps)]


def _one_device_each(records: Records, steps: int, seed: int, batch: int) -> list:
    """The gradient of each step of the one-device DP-SGD at fixed weights (lr 0), each from
    a fresh DPSGD whose draws are the workers' draws of that step. (Run as one sequence, the
    one-device DP-SGD's generator also gives the noise of an empty draw, which moves its later
    draws away from the workers', whose noise has a stream of its own.)"""
    grads = []
    for h in range(steps):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(h):
            torch.rand(len(records), generator=gen)
        grads.append(_one_device(records, 1, 0.0, gen, batch)[0][0])
    return grads


def test_two_workers_clip_like_one_device(tmp_path: Path) -> None:
    records = make_records(W.node_data().train, D.SEQ_LEN)
    # sharded (FSDP2), a batch of 8: sequences both above and below the clipping norm
    assert 0 not in _draw_sizes(records, 3, 7, 8)
    (got,) = _torchrun(tmp_path / "full", [0.0], "full_shard", 3, 0.5, 7, 8)
    want, losses, norms = _one_device(records, 3, 0.5, 7, 8)
    every = torch.cat(norms)
    assert (every > D.CLIP).any() and (every < D.CLIP).any(), every  # clipping both ways
    for h, (g, w) in enumerate(zip(got, want, strict=True)):
        scale = max(float(t.abs().max()) for t in w.values())
        assert max(float((g[k] - w[k]).abs().max()) for k in w) <= 1e-5 * scale, h
        assert abs(_loss(tmp_path / "full", h) - losses[h]) <= 1e-5 * losses[h]
    # replicating workers, a batch of 2: draws of 0 and 1 sequences leave a worker without a
    # row (it trains one with weight 0, the same collectives); an empty draw is noise alone
    sizes = _draw_sizes(records, 6, 5, 2)
    assert 0 in sizes and 1 in sizes, sizes
    (got,) = _torchrun(tmp_path / "replicate", [0.0], "replicate", 6, 0.0, 5, 2)
    want = _one_device_each(records, 6, 5, 2)
    for h, (g, w) in enumerate(zip(got, want, strict=True)):
        scale = max(float(t.abs().max()) for t in w.values()) or 1.0
        assert max(float((g[k] - w[k]).abs().max()) for k in w) <= 1e-5 * scale, (h, sizes[h])


def test_noise_is_drawn_once_for_the_node(tmp_path: Path) -> None:
    """sigma = 1, weights held still (lr 0): the noisy gradient minus the noise-free one, times
    the expected batch, is the noise the node added to its summed clipped gradient: std sigma
    x C, and independent between the two workers' shards (not one draw per worker, not the
    same draw on both halves)."""
    batch, sigma, steps = 8, 1.0, 3
    noisy, clean = _torchrun(tmp_path, [sigma, 0.0], "full_shard", steps, 0.0, 9, batch)
    noise = torch.cat([((n[k] - c[k]) * batch).flatten() for n, c in zip(noisy, clean, strict=True)
                       for k in c])  # fmt: skip
    assert noise.numel() > 100_000
    std = float(noise.std())
    assert abs(std - sigma * D.CLIP) <= 0.02 * sigma * D.CLIP, std
    assert abs(float(noise.mean())) <= 0.01 * sigma * D.CLIP
    name = "model.layers.0.self_attn.q_proj.weight"  # (128, 128): rows 0-63 on worker 0

    def drawn(step: int) -> torch.Tensor:
        return noisy[step][name] - clean[step][name]

    halves = torch.stack([drawn(0)[:64].flatten(), drawn(0)[64:].flatten()])
    assert abs(float(torch.corrcoef(halves)[0, 1])) < 0.05  # each worker its own slice
    steps = torch.stack([drawn(0).flatten(), drawn(1).flatten()])
    assert abs(float(torch.corrcoef(steps)[0, 1])) < 0.05  # a fresh draw every step
