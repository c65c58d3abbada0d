"""DP-SGD on the node's torchrun workers: Opacus' ghost clipping for FSDP2, with the privacy of
the one-device DP-SGD (node/dp_trainer.py) unchanged.

The guarantee rests on three things, each kept whole across W workers:

- **Poisson sampling over the node's whole data.** Every worker draws the same Bernoulli mask
  over all N sequences (one generator, the same secret seed on every worker) and trains its
  share of the drawn rows (r, r + W, ...): the batch is the one-device batch, q = B / N.
- **Clipping per sequence.** A sequence is clipped by the worker that trains it: FSDP gathers
  each block's whole weights for the forward and backward passes, so Opacus' ghost norms are
  those of the sequence's whole gradient.
- **Noise once per step for the node.** Opacus' FSDP optimizer draws N(0, (sigma C)^2) of each
  parameter's whole shape from a generator that is identical on every worker and adds it to
  the sharded gradient, so each worker keeps its own slice of that one draw: every coordinate
  gets exactly one noise sample (replicating workers add the same sample and stay equal). FSDP
  averages the workers' clipped sums, so Opacus divides the noise by W too, and then divides
  by the per-worker expected batch B / W: the step uses (sum of clipped + noise) / B, the
  one-device step.

Every worker joins every step's collectives: one whose share of the draw is empty trains one
row with weight 0 (it adds exactly nothing), so an empty draw is the noise-only step.

Only ghost mode: Opacus has no FSDP form of materialised per-sample gradients (``hooks``), and
compute stays fp32 (as on one device: ghost norms and the gradients they clip come from two
backward passes, and bf16 rounding between them would loosen the bound on a contribution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from opacus.grad_sample import GradSampleModuleFastGradientClippingFSDP
from opacus.optimizers import FSDPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from node.dp_trainer import DPSettings, Records, backward, generator_on, inputs_of
from step_common.errors import StepError
from step_model.model import Transformer

_NOISE_STREAM = 0x6E6F697365
"""Mixed into the round's secret seed for the noise generator: draws and noise never share a
stream."""


@dataclass(frozen=True)
class WorkerDP:
    """What the workers need for a DP round: the settings the ClientApp's ledger charged for,
    and the round's secret seed (drawn by the ClientApp from the operating system)."""

    settings: DPSettings
    seed: int


class ShardedDPSGD:
    """Opacus around a ``fully_shard``ed model and its optimizer for one round, on every
    worker with the same ``seed`` (secret: the node draws it, the coordinator never sees it);
    ``close()`` unhooks."""

    def __init__(
        self,
        model: Transformer,
        optimizer: torch.optim.Optimizer,
        records: Records,
        dp: DPSettings,
        bos_id: int,
        seed: int,
    ) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if dp.mode != "ghost":
            raise StepError(
                f"privacy.mode {dp.mode} does not run on torchrun workers (Opacus has no FSDP "
                "form of per-sample gradients): set privacy.mode: ghost, or resources.gpus: 1"
            )
        if dp.expected_batch % self.world:
            raise StepError(
                f"the federation's batch of {dp.expected_batch} sequences does not split over "
                f"{self.world} workers: ask for a batch_size divisible by {self.world}, or change "
                "resources.gpus"
            )
        self.optimizer, self.records, self.dp, self.bos_id = optimizer, records, dp, bos_id
        self.device = next(model.parameters()).device  # of this worker's shards
        self.draws = torch.Generator().manual_seed(seed)
        noise_seed = torch.Generator().manual_seed(seed ^ _NOISE_STREAM)
        self.noise = generator_on(self.device, noise_seed)  # identical on every worker
        self.q = dp.expected_batch / len(records)
        self.module = GradSampleModuleFastGradientClippingFSDP(
            model, max_grad_norm=dp.max_grad_norm, use_ghost_clipping=True, loss_reduction="mean"
        )
        self.dp_optimizer = FSDPOptimizerFastGradientClipping(
            optimizer,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=dp.expected_batch // self.world,
            generator=self.noise,
        )
        self.criterion = DPLossFastGradientClipping(
            self.module, self.dp_optimizer, nn.CrossEntropyLoss(), "mean"
        )

    def step(self, lr: float) -> float:
        """One DP-SGD step of the node; the mean loss over the drawn sequences (nan when the
        draw is empty), the same on every worker."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        picked = (torch.rand(len(self.records), generator=self.draws) < self.q).nonzero()
        mine = picked.squeeze(1)[self.rank :: self.world]  # (b,) this worker's drawn rows
        weight = torch.ones(mine.numel())
        if mine.numel() == 0:  # joins the collectives with one row that counts for nothing
            mine, weight = torch.zeros(1, dtype=torch.int64), torch.zeros(1)
        y = self.records.targets[mine].to(self.device)  # (b, T)
        x = inputs_of(y, self.bos_id)
        weight = weight.to(self.device)
        self.dp_optimizer.zero_grad(set_to_none=True)
        logits = self.module(x)  # (b, T, V)
        flat_logits, flat_y = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
        loss = self.criterion(flat_logits, flat_y, shape=logits.shape) * weight
        backward(loss)
        self.dp_optimizer.step()
        total = torch.stack([loss.loss_per_sample.detach().sum().cpu(), weight.sum().cpu()])
        dist.all_reduce(total)  # (sum of the drawn sequences' losses, how many were drawn)
        return float(total[0] / total[1]) if float(total[1]) else float("nan")

    def close(self) -> None:
        self.dp_optimizer.zero_grad(set_to_none=True)
        self.module._close()  # removes Opacus' hooks and attributes from the model


def sharded_dp_steps(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    records: Records,
    dp: DPSettings,
    lrs: list[float],
    bos_id: int,
    seed: int,
) -> list[float]:
    """``len(lrs)`` DP-SGD steps of the node on every worker (the same ``seed`` on each);
    each step's loss (nan for an empty draw)."""
    sgd = ShardedDPSGD(model, optimizer, records, dp, bos_id, seed)
    try:
        return [sgd.step(lr) for lr in lrs]
    finally:
        sgd.close()
