"""Centralized training: the single-process trainer and the pieces the federated node reuses.

The building blocks (``make_optimizer``, ``lr_at``, ``train_step``) are what a federation node
runs for its H inner steps; ``Trainer`` wraps them into ``step-model train``: data, progress,
periodic evaluation, metrics.jsonl, checkpoints, and an exact ``--resume``.

Resume is exact on the CPU because nothing hidden carries state between steps: batches are a pure
function of (seed, step) (data.py), the learning rate a pure function of step, and the weights
and AdamW moments are restored bit for bit from the checkpoint.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import torch
from torch import nn

from step_common.errors import StepError
from step_common.fileio import atomic_write_json
from step_common.typed_config import parse_section
from step_model.checkpoint import Checkpoint
from step_model.config import ModelConfig, preset
from step_model.corpus import (
    LanguageSelection,
    available_languages,
    is_step_corpus,
    read_corpus,
    resolve_corpus,
)
from step_model.data import LanguageMixture, TokenStream, tokenize_texts
from step_model.evaluate import bits_per_byte, mean_bpb
from step_model.model import Transformer, autocast, next_token_loss
from step_model.run_folder import RunFolder
from step_model.tokenizer import Tokenizer, load_tokenizer
from step_model.train_config import TrainConfig

# --- building blocks shared with the federation node ------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StepError("--device cuda but no CUDA GPU is visible: use --device cpu")
    return torch.device(name)


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (RMSNorm weights are not decayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused=True: one kernel for all parameters, on the CPU as on the GPU.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def lr_at(step: int, *, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine down to ``peak * min_ratio``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_clip: float,
    lr: float,
) -> float:
    """One AdamW step on the batch (x, y) of shape (B, T); returns the loss in nats."""
    device = x.device
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(device):
        logits = model(x)
    loss = next_token_loss(logits, y)
    loss.backward()  # type: ignore[no-untyped-call]
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# --- the centralized run ----------------------------------------------------------------------


@dataclass
class RunData:
    tokenizer: Tokenizer
    train: dict[str, TokenStream]
    valid: dict[str, TokenStream]
    skipped: list[str]
    """Languages of a group selection left out for having too little text for one sequence."""


def load_run_data(cfg: TrainConfig) -> RunData:
    """Read and tokenize the train split and the held-out split of the selected languages."""
    root = resolve_corpus(cfg.corpus)
    selection = LanguageSelection.parse(cfg.languages)
    tokenizer = load_tokenizer(cfg.tokenizer)
    train = tokenize_texts(read_corpus(root, "train", selection), tokenizer)
    skipped = []
    if not selection.strict:  # a group or "everything": leave out what cannot fill a sequence
        skipped = sorted(lang for lang, s in train.items() if len(s.tokens) < cfg.seq_len)
        train = {lang: s for lang, s in train.items() if lang not in skipped}
    # Held-out text for the languages trained on; a plain folder of text has none.
    valid_text: dict[str, str] = {}
    if is_step_corpus(root):
        present = set(available_languages(root, "valid"))
        valid_sel = LanguageSelection(tuple(lang for lang in train if lang in present), False)
        if valid_sel.languages:
            valid_text = read_corpus(root, "valid", valid_sel)
    return RunData(tokenizer, train, tokenize_texts(valid_text, tokenizer), skipped)


@contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Turn Ctrl-C into a flag checked between steps, so a step is never cut in half."""
    hit = {"flag": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        if hit["flag"]:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        hit["flag"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: hit["flag"]
    finally:
        signal.signal(signal.SIGINT, previous)


class Interrupted(StepError):
    """Ctrl-C: the run stopped between two steps after saving a checkpoint (exit code 130)."""

    exit_code = 130


ProgressFn = Callable[[int, dict[str, float]], None]


class Trainer:
    """``step-model train``: one process, the union of the selected languages' data."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool = False) -> None:
        self.cfg, self.out, self.resume = cfg, Path(out), resume
        self.folder = RunFolder(self.out, "step", digits=8)
        self.device = pick_device(cfg.device)
        self.folder.check_start(
            resume,
            occupied=f"{self.out} already holds a training run: pass --resume to continue "
            "it, or choose another --out",
            empty=f"--resume: {self.out} holds no checkpoint to resume from: drop "
            "--resume to start a new run",
        )
        self.data = load_run_data(cfg)
        self.model_config: ModelConfig = preset(cfg.preset).with_vocab(
            self.data.tokenizer.vocab_size
        )
        if cfg.seq_len > self.model_config.max_seq_len:
            raise StepError(
                f"--seq-len {cfg.seq_len} exceeds the {cfg.preset} preset's "
                f"max_seq_len {self.model_config.max_seq_len}: lower it"
            )
        self.mixture = LanguageMixture(
            self.data.train, cfg.seq_len, cfg.alpha, self.data.tokenizer.bos_id, cfg.seed
        )
        self.token_bytes = self.data.tokenizer.token_bytes()
        torch.manual_seed(cfg.seed)
        self.model = Transformer(self.model_config).to(self.device)
        self.optimizer = make_optimizer(
            self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2)
        )
        self.step = 0
        self.tokens = 0
        if resume:
            self._restore()
        self._tokens_at_start = self.tokens  # tokens/s counts this process's steps only
        self.forward_model = (
            cast(nn.Module, torch.compile(self.model)) if cfg.compile else self.model
        )

    def _restore(self) -> None:
        """Continue from the run folder's latest checkpoint: weights, AdamW moments, counters
        (the folder also drops the metrics logged after it: they will be logged again)."""
        ckpt = self.folder.resume(self._check_resumable)
        self.model.load_state_dict(ckpt.weights)
        assert ckpt.optimizer is not None, "training checkpoints always carry the optimizer"
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.step, self.tokens = int(ckpt.state["step"]), int(ckpt.state["tokens"])

    def _check_resumable(self, ckpt: Checkpoint) -> None:
        """StepError unless ``ckpt`` was saved by a run with these settings and this model."""
        saved = parse_section(TrainConfig, ckpt.state["train_config"], "the checkpoint's state")
        changed = [
            name
            for name in TrainConfig.model_fields
            if name not in TrainConfig.RESUMABLE_CHANGES
            and getattr(saved, name) != getattr(self.cfg, name)
        ]
        if changed:
            raise StepError(
                f"--resume with different settings {changed} than the saved run: "
                "use the original flags or start a new --out"
            )
        if ckpt.config != self.model_config:
            raise StepError(
                f"--resume: the checkpoint's model config differs from preset "
                f"{self.cfg.preset}: start a new --out"
            )

    def save(self, extra: dict[str, Any] | None = None) -> Path:
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "train_config": self.cfg.model_dump(),
            "languages": sorted(self.data.train),
            **(extra or {}),
        }
        ckpt = Checkpoint(
            self.model_config,
            self.model.state_dict(),
            self.data.tokenizer,
            state,
            self.optimizer.state_dict(),
        )
        return self.folder.save(ckpt)

    def evaluate(self, max_tokens: int | None) -> dict[str, float]:
        return bits_per_byte(
            self.model,
            self.data.valid,
            self.token_bytes,
            seq_len=self.cfg.seq_len,
            bos_id=self.data.tokenizer.bos_id,
            max_tokens=max_tokens,
        )

    def log(self, record: dict[str, Any]) -> None:
        self.folder.log(record)

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps``, evaluate on all held-out text, save; returns the summary."""
        self.folder.prepare()  # the folder, less what a killed write left in it
        atomic_write_json(self.out / "train_config.json", self.cfg.model_dump())
        train_seconds, window = 0.0, []
        self.model.train()
        with deferred_interrupt() as interrupted:
            while self.step < self.cfg.steps:
                t0 = time.perf_counter()
                loss, lr = self._step()
                train_seconds += time.perf_counter() - t0
                window.append(loss)
                stats = {"loss": loss, "lr": lr, "tokens_per_s": self.tokens_per_s(train_seconds)}
                stats.update(self._bookkeeping(window, stats))
                if progress:
                    progress(self.step, stats)
                if interrupted():
                    path = self.save()
                    raise Interrupted(
                        f"interrupted at step {self.step}; checkpoint {path}: "
                        "continue with the same command plus --resume"
                    )
        return self._finish(train_seconds)

    def _step(self) -> tuple[float, float]:
        """One optimizer step on the batch of this step; returns (loss, lr)."""
        cfg = self.cfg
        x, y, _ = self.mixture.batch(self.step, cfg.batch_size)
        lr = lr_at(
            self.step,
            peak=cfg.lr,
            warmup=cfg.warmup_steps,
            total=cfg.steps,
            min_ratio=cfg.min_lr_ratio,
        )
        loss = train_step(
            self.forward_model,
            self.optimizer,
            x.to(self.device),
            y.to(self.device),
            cfg.grad_clip,
            lr,
        )
        if not math.isfinite(loss):
            raise StepError(
                f"loss became {loss} at step {self.step}: lower --lr or raise "
                "--warmup-steps, then --resume from the last checkpoint"
            )
        self.step += 1
        self.tokens += x.numel()
        return loss, lr

    def _bookkeeping(self, window: list[float], stats: dict[str, float]) -> dict[str, float]:
        """Metrics, quick evaluations and checkpoints due after this step; empties ``window``."""
        cfg, step, extra = self.cfg, self.step, {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            self.log(
                {
                    "kind": "train",
                    "step": step,
                    "tokens": self.tokens,
                    "loss": sum(window) / len(window),
                    "lr": stats["lr"],
                    "tokens_per_s": stats["tokens_per_s"],
                }
            )
            window.clear()
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and self.data.valid:
            bpb = self.evaluate(cfg.eval_tokens)
            extra["mean_bpb"] = mean_bpb(bpb)
            self.log(
                {
                    "kind": "eval",
                    "step": step,
                    "tokens": self.tokens,
                    "mean_bpb": extra["mean_bpb"],
                    "bpb": bpb,
                    "quick": True,
                }
            )
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            self.save()
        return extra

    def _finish(self, train_seconds: float) -> dict[str, Any]:
        bpb = self.evaluate(None) if self.data.valid else {}
        summary = {
            "steps": self.step,
            "tokens": self.tokens,
            "mean_bpb": mean_bpb(bpb) if bpb else None,
            "bpb": bpb,
            "tokens_per_s": self.tokens_per_s(train_seconds),
            "train_seconds": train_seconds,
            "params": self.model.num_params(),
            "preset": self.cfg.preset,
            "tokenizer": self.data.tokenizer.name,
            "languages": sorted(self.data.train),
            "skipped_languages": self.data.skipped,
        }
        if bpb:
            self.log(
                {
                    "kind": "eval",
                    "step": self.step,
                    "tokens": self.tokens,
                    "mean_bpb": summary["mean_bpb"],
                    "bpb": bpb,
                    "quick": False,
                }
            )
        self.save({"final": summary})
        self.folder.write_summary(summary)
        return summary

    def tokens_per_s(self, train_seconds: float) -> float:
        """Training tokens per second of step time (evaluation and checkpoints excluded)."""
        return (self.tokens - self._tokens_at_start) / train_seconds if train_seconds else 0.0
