"""Run by tests/node/test_sharded_dp.py under torchrun: DP-SGD steps of a `debug` model on W
workers (gloo, CPU, FSDP2) through ``node.sharded_dp``, with plain SGD so that a step's update
is its gradient; worker 0 writes each step's whole gradient (what Opacus hands the optimizer)
as OUT/noise-SIGMA/grad-STEP.safetensors.

    torchrun --standalone --nproc-per-node W tests/node/sharded_dp_worker.py OUT NOISES SHARDING
        STEPS LR SEED BATCH

NOISES: noise multipliers separated by commas, each run from the same weights and seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from node.dp_trainer import DPSettings, make_records
from node.sharded import empty_sharded, load_global, worker_mesh
from node.sharded_dp import ShardedDPSGD
from step_model.checkpoint import seeded_weights
from step_model.config import ModelConfig, preset
from step_model.tokenizer import ByteTokenizer
from tests.node import sharded_worker as W

CPU = torch.device("cpu")
SEQ_LEN, CLIP = 16, 7.4
"""The per-sequence gradient norms of these steps are ~5-11: some clipped, some not."""


def config() -> ModelConfig:
    return preset("debug").with_vocab(ByteTokenizer().vocab_size)


def dp_settings(noise: float, batch: int) -> DPSettings:
    return DPSettings(noise, CLIP, batch, "ghost")


def main() -> None:
    out, noises, sharding = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    steps, lr, seed = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    batch = int(sys.argv[7])
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    for noise in noises:
        _steps(out / f"noise-{noise}", float(noise), sharding, steps, lr, seed, batch)
    # Both workers tear gloo down together: worker 1 once aborted in teardown ("terminate called
    # without an active exception", SIGABRT) while worker 0 was still writing its gradients.
    dist.barrier()
    dist.destroy_process_group()


def _steps(out: Path, noise: float, sharding: str, steps: int, lr: float, seed: int,
           batch: int) -> None:  # fmt: skip
    mesh = worker_mesh(CPU, replicate=sharding == "replicate")
    model = empty_sharded(config(), mesh, CPU)
    load_global(model, seeded_weights(config(), 0) if dist.get_rank() == 0 else None)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    records = make_records(W.node_data().train, SEQ_LEN)
    sgd = ShardedDPSGD(model, optimizer, records, dp_settings(noise, batch), ByteTokenizer().bos_id,
                       seed)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for h in range(steps):
        loss = sgd.step(lr)
        grads = {}
        for name, p in model.named_parameters():
            assert isinstance(p.grad, DTensor)
            grads[name] = p.grad.full_tensor()  # a collective: every worker
        if dist.get_rank() == 0:
            save_file(grads, str(out / f"grad-{h}.safetensors"), metadata={"loss": str(loss)})
    sgd.close()


if __name__ == "__main__":
    main()
