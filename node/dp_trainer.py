"""DP-SGD for the inner loop, through Opacus: per-sequence clipping, Gaussian noise, Poisson
sampling.

The node's training text is cut into fixed, non-overlapping sequences of ``seq_len`` tokens
(``Records``): these are the privacy unit. At every step each sequence joins the batch
independently with probability q = expected batch / N (Poisson sampling, what the accountant
assumes; the language mixture of non-private training does not apply). Opacus then clips each
sequence's gradient to L2 norm C, sums, adds N(0, (sigma C)^2) per coordinate and divides by
the expected batch, and AdamW steps on that.

Two Opacus modes: ``ghost`` (fast gradient clipping: per-sample norms without per-sample
gradients, then a second backward on the reweighted loss; the model's untied embedding and
head make it possible) and ``hooks`` (materialised per-sample gradients, B x params memory).

Randomness (which sequences, which noise) comes from a generator seeded by the operating
system, never from the federation seed: the coordinator knows that seed and could otherwise
regenerate the noise and subtract it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from step_model.data import TokenStream


@dataclass(frozen=True)
class Records:
    """The node's training text as fixed sequences: the unit that DP-SGD protects."""

    targets: torch.Tensor
    """(N, T) int64: row i is sequence i, T = seq_len consecutive tokens of one language."""
    per_language: dict[str, int]
    """Sequences per language (public metadata: it says how much text, not which)."""

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def make_records(streams: dict[str, TokenStream], seq_len: int) -> Records:
    rows, per_language = [], {}
    for lang in sorted(streams):
        tokens = streams[lang].tokens
        n = len(tokens) // seq_len
        per_language[lang] = n
        if n:
            rows.append(torch.from_numpy(tokens[: n * seq_len].astype(np.int64)).view(n, seq_len))
    targets = torch.cat(rows) if rows else torch.zeros((0, seq_len), dtype=torch.int64)
    return Records(targets, per_language)


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    max_grad_norm: float
    expected_batch: int
    mode: str
    """'ghost' or 'hooks'."""


class DPSGD:
    """Opacus around a model and its (AdamW) optimizer for one round; ``close()`` unhooks."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        records: Records,
        dp: DPSettings,
        bos_id: int,
        generator: torch.Generator,
    ) -> None:
        self.model, self.optimizer, self.records, self.dp = model, optimizer, records, dp
        self.bos_id, self.generator = bos_id, generator
        self.q = dp.expected_batch / len(records)
        self.criterion: DPLossFastGradientClipping | None = None
        self.dp_optimizer: DPOptimizer
        self.module: GradSampleModule
        ghost = dp.mode == "ghost"
        if ghost:
            self.module = GradSampleModuleFastGradientClipping(
                model, max_grad_norm=dp.max_grad_norm, use_ghost_clipping=True
            )
        else:
            self.module = GradSampleModule(model)
        optimizer_class = DPOptimizerFastGradientClipping if ghost else DPOptimizer
        self.dp_optimizer = optimizer_class(
            optimizer,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=dp.expected_batch,
            generator=generator,
        )
        if ghost:
            self.criterion = DPLossFastGradientClipping(
                self.module, self.dp_optimizer, nn.CrossEntropyLoss(), "mean"
            )

    def step(self, lr: float) -> float:
        """One DP-SGD step; the mean loss over the sampled sequences (nan for an empty draw)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(self.records)
        picked = (torch.rand(n, generator=self.generator) < self.q).nonzero().squeeze(1)
        if picked.numel() == 0:
            self._noise_only_step()
            return float("nan")
        y = self.records.targets[picked]  # (B, T), B ~ Poisson-binomial(n, q)
        x = torch.cat([torch.full_like(y[:, :1], self.bos_id), y[:, :-1]], dim=1).contiguous()
        self.dp_optimizer.zero_grad(set_to_none=True)
        logits = self.module(x)  # (B, T, V)
        flat_logits, flat_y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        if self.criterion is not None:  # ghost: two backward passes inside loss.backward()
            loss = self.criterion(flat_logits, flat_y, shape=logits.shape)
        else:
            loss = F.cross_entropy(flat_logits, flat_y)
        with warnings.catch_warnings():
            # Ghost clipping's first backward starts from the loss with no input that needs a
            # gradient (token ids): torch warns about it per layer; expected, harmless.
            warnings.filterwarnings(
                "ignore", message="Full backward hook is firing", category=UserWarning
            )
            loss.backward()
        self.dp_optimizer.step()
        return float(loss.item())

    def _noise_only_step(self) -> None:
        """An empty Poisson draw is still a DP-SGD step: the gradient is the noise alone,
        N(0, (sigma C)^2) / expected batch, as Opacus computes it for a batch."""
        std = self.dp.noise_multiplier * self.dp.max_grad_norm
        for p in self.model.parameters():
            noise = torch.normal(0.0, std, p.shape, generator=self.generator, dtype=p.dtype)
            p.grad = noise / self.dp.expected_batch
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        self.dp_optimizer.zero_grad(set_to_none=True)
        self.module._close()  # removes Opacus' hooks and attributes from the model


def dp_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    records: Records,
    dp: DPSettings,
    lrs: list[float],
    bos_id: int,
    generator: torch.Generator,
) -> list[float]:
    """``len(lrs)`` DP-SGD steps on ``model`` (in place) with ``optimizer`` (its state carries
    over between rounds); returns each step's loss (nan for an empty draw)."""
    sgd = DPSGD(model, optimizer, records, dp, bos_id, generator)
    try:
        return [sgd.step(lr) for lr in lrs]
    finally:
        sgd.close()
