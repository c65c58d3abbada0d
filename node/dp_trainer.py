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

The model may sit on a GPU: the records stay in host memory and each drawn batch moves to the
model's device. There, hooks mode runs the forward pass and the per-sample gradients in bf16
(like non-private training) and clips and adds noise in fp32; ghost mode runs in fp32.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample import grad_sample_module as _gsm
from opacus.grad_sample import grad_sample_module_fast_gradient_clipping as _fgc
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import (
    DPLossFastGradientClipping,
    DPTensorFastGradientClipping,
)
from torch import nn

from step_model.data import TokenStream

_opacus_store = _gsm.create_or_accumulate_grad_sample


def _store_grad_sample(
    *, param: torch.Tensor, grad_sample: torch.Tensor, max_batch_len: int
) -> None:
    """Opacus' ``create_or_accumulate_grad_sample`` without its staging copy where none is
    needed. Opacus zero-fills a (max_batch_len, *param.shape) tensor and copies each layer's
    per-sample gradients (B, *param.shape) into it, so that a parameter used twice in one
    forward (RNNs, tied weights) can accumulate; when a parameter's gradients arrive for the
    whole batch at its first use, that tensor itself is kept (the same values): two passes over
    B x params of memory fewer per step, about 10% of a DP-SGD step on the CPU."""
    first = not hasattr(param, "_current_grad_sample")
    if param.requires_grad and first and grad_sample.shape[0] == max_batch_len:
        param._current_grad_sample = grad_sample  # type: ignore[attr-defined]
    else:
        _opacus_store(param=param, grad_sample=grad_sample, max_batch_len=max_batch_len)


# Both Opacus modules imported the function by name: replace it where it is called.
_gsm.create_or_accumulate_grad_sample = _store_grad_sample
_fgc.create_or_accumulate_grad_sample = _store_grad_sample


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


def inputs_of(y: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(b, T) inputs of target sequences ``y`` (b, T): BOS, then each target but the last."""
    return torch.cat([torch.full_like(y[:, :1], bos_id), y[:, :-1]], dim=1).contiguous()


def backward(loss: torch.Tensor | DPTensorFastGradientClipping) -> None:
    """``loss.backward()``; ghost clipping's first backward starts from a loss with no input
    that needs a gradient (token ids): torch warns about it per layer, expected and harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing", category=UserWarning
        )
        loss.backward()


def generator_on(device: torch.device, secret: torch.Generator) -> torch.Generator:
    """A generator on ``device`` for the noise (torch draws CUDA noise only from a CUDA
    generator), seeded from the secret CPU generator: as unpredictable as that one."""
    if device.type == "cpu":
        return secret
    g = torch.Generator(device)
    g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=secret)))
    return g


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
        bf16: bool | None = None,
    ) -> None:
        self.model, self.optimizer, self.records, self.dp = model, optimizer, records, dp
        self.bos_id, self.generator = bos_id, generator
        self.device = next(model.parameters()).device
        self.noise_generator = generator_on(self.device, generator)
        # Forward and per-sample gradients under bf16 autocast (hooks mode on a GPU, as in
        # non-private training there); clipping and noise stay fp32. Ghost mode stays fp32:
        # its norms come from another backward pass than the gradients they clip, and bf16
        # rounding between the two would loosen the bound on each contribution.
        self.bf16 = dp.mode == "hooks" and self.device.type == "cuda" if bf16 is None else bf16
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
            generator=self.noise_generator,
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
        y = self.records.targets[picked].to(self.device)  # (B, T), B ~ Poisson-binomial(n, q)
        x = inputs_of(y, self.bos_id)
        self.dp_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            logits = self.module(x)  # (B, T, V)
        flat_logits, flat_y = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
        if self.criterion is not None:  # ghost: two backward passes inside loss.backward()
            loss = self.criterion(flat_logits, flat_y, shape=logits.shape)
        else:
            loss = F.cross_entropy(flat_logits, flat_y)
        backward(loss)
        if self.bf16:
            self._grad_samples_to_fp32()
        self.dp_optimizer.step()
        return float(loss.item())

    def _grad_samples_to_fp32(self) -> None:
        """Per-sample gradients computed in bf16 become fp32 before Opacus measures and clips
        them: the norm is then taken of exactly the values that are scaled, so every
        sequence's clipped contribution stays within C, as in fp32 (a norm rounded to bf16
        could let it exceed C by ~0.4%, breaking the sensitivity the accountant assumes)."""
        for p in self.model.parameters():
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, torch.Tensor) and gs.dtype != p.dtype:
                p.grad_sample = gs.to(p.dtype)  # type: ignore[attr-defined]

    def _noise_only_step(self) -> None:
        """An empty Poisson draw is still a DP-SGD step: the gradient is the noise alone,
        N(0, (sigma C)^2) / expected batch, as Opacus computes it for a batch."""
        std = self.dp.noise_multiplier * self.dp.max_grad_norm
        for p in self.model.parameters():
            noise = torch.normal(
                0.0, std, p.shape, generator=self.noise_generator, dtype=p.dtype, device=p.device
            )
            p.grad = noise / self.dp.expected_batch
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        self.dp_optimizer.zero_grad(set_to_none=True)
        self.module._close()  # removes Opacus' hooks and attributes from the model


def expected_tokens(records: Records, dp: DPSettings, steps: int) -> dict[str, int]:
    """Tokens trained per language as the node reports them under DP: the expected counts
    (steps x q x sequences x T, from how much text the node holds, not from which sequences
    were drawn), floored: never above steps x batch x T."""
    q = dp.expected_batch / len(records)
    seq_len = int(records.targets.shape[1])
    return {lang: int(steps * q * n * seq_len) for lang, n in records.per_language.items()}


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
