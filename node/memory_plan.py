"""What one inner step needs per device, for a model on a node's layout, against what it has.

``step-node check --preset P`` prints it and refuses a layout that cannot fit, before a round
fails with an out-of-memory error hours into a run. The persistent part is exact (fp32 weights,
gradients and AdamW's two moments: 16 bytes per parameter, divided over the workers when they
are FSDP-sharded); the rest is an estimate from the model's shapes:

- gathered (FSDP, workers > 1): a block's weights gathered in the compute precision while it
  runs, and the next one prefetched, plus the root (embedding and head) during its own use;
- activations, per token of a worker's rows and per block, the tensors a Llama block keeps for
  its backward pass: the block input, the two norms' outputs, q, k, v, the attention output and
  the MLP's gate, up, product (8 dim + 3 kv + 4 ffn values; ``scaled_dot_product_attention``'s
  fused kernels keep no T x T scores); with activation checkpointing only the block input is
  kept, and one block's activations exist at a time during recomputation;
- logits: B x T x vocab in the compute precision, and in fp32 twice (the loss and its grad).

Checked against a measured forward + backward on the CPU (fp32, VmHWM): activations, logits
and gradients of `small` at 8 x 256 measured 1.02 GiB, estimated 1.17 GiB; `base` at 4 x 256
0.76 GiB, estimated 1.08 GiB: on the safe side. Allocator slack, kernels' workspaces and the
framework's own memory come on top: the check refuses above ``FILL`` of the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from step_model.config import ModelConfig
from step_model.model import Transformer

FILL = 0.9
"""The share of a device's memory a plan may take (the rest: allocator slack, workspaces)."""
GIB = 2**30


@dataclass(frozen=True)
class StepMemory:
    """Bytes on one device at the peak of an inner step."""

    weights: int
    gradients: int
    optimizer: int
    gathered: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.gathered
                + self.activations + self.logits)  # fmt: skip

    def rows(self) -> list[tuple[str, int]]:
        return [("weights (fp32)", self.weights), ("gradients (fp32)", self.gradients),
                ("AdamW moments (fp32)", self.optimizer), ("gathered blocks", self.gathered),
                ("activations", self.activations), ("logits", self.logits)]  # fmt: skip


def step_memory(
    config: ModelConfig,
    workers: int,
    batch_size: int,
    seq_len: int,
    precision: str,
    checkpointing: bool,
    shards: int | None = None,
) -> StepMemory:
    """The estimate for one device: ``workers`` split each batch by rows; the persistent part
    is sharded over ``shards`` of them (default all: FSDP full shard; 1: replicated)."""
    shards = workers if shards is None else shards
    with torch.device("meta"):
        model = Transformer(config)
    params = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    root = params - block * config.n_layers
    width = 2 if precision == "bf16" else 4
    shard = math.ceil(params / shards)
    gathered = 0 if shards == 1 else (2 * block + root) * width
    rows = math.ceil(batch_size / workers)
    tokens = rows * seq_len
    kv = config.n_kv_heads * config.head_dim
    per_token = 8 * config.dim + 3 * kv + 4 * config.ffn_dim
    if checkpointing:
        kept = tokens * config.dim * width * config.n_layers + tokens * per_token * width
    else:
        kept = tokens * per_token * width * config.n_layers
    logits = tokens * config.vocab_size * (width + 2 * 4)
    return StepMemory(4 * shard, 4 * shard, 8 * shard, gathered, kept, logits)


def device_bytes(device: torch.device, workers: int) -> tuple[int, str]:
    """(memory of one device, its name): a GPU's own memory; on the CPU the host's memory
    shared by the workers (each gets its part)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{props.name}, {props.total_memory / GIB:.1f} GiB"
    total = _host_bytes()
    return total // workers, f"host memory {total / GIB:.1f} GiB / {workers} worker(s)"


def _host_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")
