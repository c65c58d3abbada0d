"""The node's inner loop on a group of torch.distributed workers (torchrun), FSDP2 sharded.

An institution whose model outgrows one device trains on W workers (one per GPU; gloo
processes on a CPU). Each transformer block and then the whole model is wrapped with
PyTorch's ``fully_shard``: a worker holds 1/W of the weights, of their gradients and of the
AdamW moments (sharded on each tensor's first dimension), and gathers one block's weights at a
time for its forward and backward.

The round's global batch is split by rows: worker r trains rows r, r+W, ... of each batch. Its
loss is the mean over its rows and FSDP's reduce-scatter averages the gradients over the
workers, so with a batch divisible by W a step is the one-worker step on the whole batch, up
to the order of float sums (tests/node/test_sharded.py: 2 workers against 1).

The pseudo-gradient is computed per shard (each worker: its rows of base - local) and gathered
to worker 0 one tensor at a time, so no worker ever holds a second whole model besides its
shard; worker 0, which talks to the coordinator, encodes the update from these tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed._composable.checkpoint_activation import checkpoint
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from step_model.config import ModelConfig
from step_model.model import Transformer, rope_tables
from step_model.train import train_step

Weights = dict[str, torch.Tensor]


def worker_mesh(device: torch.device, replicate: bool = False) -> DeviceMesh:
    """All workers of the (already initialised) process group: one dimension to shard over,
    or (``replicate``) workers x 1, so that ``fully_shard`` replicates the whole model on each
    and averages the gradients (DDP's arithmetic, no gathers in a step; HSDP with shards of
    one)."""
    world = dist.get_world_size()
    if replicate:
        return init_device_mesh(device.type, (world, 1), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device.type, (world,))


def shard(
    model: Transformer, mesh: DeviceMesh, precision: str = "fp32", checkpointing: bool = False
) -> Transformer:
    """``model`` wrapped in place with ``fully_shard``: each block, then the root (embedding,
    final norm, head). ``precision`` bf16: blocks compute in bf16, gradients are reduced in
    fp32 and the sharded weights and AdamW state stay fp32. ``checkpointing``: each block's
    activations are recomputed in the backward pass (PyTorch's composable ``checkpoint``,
    which keeps the parameters' names, unlike a wrapper module)."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for block in model.model.layers:
        if checkpointing:
            checkpoint(block)
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def empty_sharded(
    config: ModelConfig,
    mesh: DeviceMesh,
    device: torch.device,
    precision: str = "fp32",
    checkpointing: bool = False,
) -> Transformer:
    """The model built on the meta device and sharded before any memory is allocated: each
    worker allocates only its shards (never a whole model); ``load_global`` fills them."""
    with torch.device("meta"):
        model = Transformer(config)
    shard(model, mesh, precision, checkpointing)
    model.to_empty(device=device)
    cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)  # derived, not loaded
    return model


def load_global(model: Transformer, weights: Weights | None) -> None:
    """Worker 0's full ``weights`` (None on the others) into every worker's shards."""
    full: dict[str, Any] = dict(weights) if dist.get_rank() == 0 and weights else {}
    set_model_state_dict(
        model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )


def local_shards(model: Transformer) -> Weights:
    """A copy of this worker's shard of each weight (the base of the update: 1/W of a model)."""
    return {name: _local(p).detach().clone() for name, p in model.named_parameters()}


def sharded_steps(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    lrs: list[float],
    grad_clip: float,
) -> list[float]:
    """One AdamW step per (x, y) global batch of shape (B, T), this worker on its rows; returns
    each step's loss over the whole batch (the mean of the workers' means)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = next(iter(_local(p) for p in model.parameters())).device
    losses = []
    for (x, y), lr in zip(batches, lrs, strict=True):
        if x.shape[0] % world:
            raise ValueError(f"batch of {x.shape[0]} rows does not split over {world} workers")
        mine = slice(rank, None, world)
        loss = train_step(model, optimizer, x[mine].to(device), y[mine].to(device), grad_clip, lr)
        total = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(total)
        losses.append(float(total) / world)
    return losses


def all_finite(model: Transformer) -> bool:
    """Whether every worker's shards are finite (a collective)."""
    ok = all(bool(torch.isfinite(_local(p)).all()) for p in model.parameters())
    flag = torch.tensor([1.0 if ok else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def gathered_update(model: Transformer, base: Weights) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, base - local) of each weight, whole, on worker 0 (host memory, fp32), one tensor
    at a time; the other workers take part in each gather and get nothing. Every worker must
    run the iterator to its end (each step is a collective)."""
    for name, p in model.named_parameters():
        delta = base[name] - _local(p).detach()
        if isinstance(p, DTensor):
            whole = DTensor.from_local(delta, p.device_mesh, p.placements, shape=p.shape,
                                       stride=p.stride()).full_tensor()  # fmt: skip
        else:
            whole = delta
        if dist.get_rank() == 0:
            yield name, whole.float().cpu()


def save_optimizer(model: Transformer, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """This worker's shard of the AdamW state into ``folder`` (torch.distributed.checkpoint:
    one file per worker and the metadata; a collective when a process group is up)."""
    state = get_optimizer_state_dict(model, optimizer)
    dcp_save({"optimizer": state}, checkpoint_id=str(folder))


def load_optimizer(model: Transformer, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """The AdamW state saved by ``save_optimizer`` with any number of workers, resharded onto
    this model's workers (or onto a plain model in a process without a group)."""
    state = get_optimizer_state_dict(model, optimizer)  # the shapes to read into
    dcp_load({"optimizer": state}, checkpoint_id=str(folder))
    set_optimizer_state_dict(model, optimizer, state)


def load_one_device_optimizer(
    model: Transformer, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
) -> None:
    """The AdamW state a node saved on one device (``optimizer.state_dict()``: parameters
    numbered in ``make_optimizer``'s order, matrices first) into this model's workers: renamed
    to the parameters' names and scattered into their shards."""
    named = list(model.named_parameters())
    order = [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]
    full: dict[str, Any] = {
        "state": {order[int(i)]: value for i, value in saved["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]}
                         for g in saved["param_groups"]],
    }  # fmt: skip
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p
