"""The settings of one centralized training run (``step-model train``); no torch, so the command
line can build its options from them without loading it."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from step_common.typed_config import STRICT, YamlFloat
from step_model.schedule import BatchSize, LocalSchedule, SeqLen, WarmupSteps


class TrainConfig(LocalSchedule):
    """Settings of one centralized training run; ``step-model train`` derives its options from
    these fields (step_common/model_options.py)."""

    model_config = STRICT
    preset: str = "debug"
    """Model preset: debug, tiny, small, base, 1b or 7b."""
    tokenizer: str = "byte"
    """'byte' or the path of a tokenizer.json from `step-model tokenizer train`."""
    corpus: str | None = None
    """Corpus folder (default: $STEP_CORPUS, then ../shared/corpus/step35)."""
    languages: str | None = None
    """Comma-separated codes (strict), or a group: 'eu' (24 EU languages), 'all'; default:
    every language present."""
    steps: int = Field(default=1000, ge=1)
    """Optimizer steps."""
    lr: YamlFloat = Field(default=3e-3, gt=0)
    """Peak learning rate (after warmup)."""
    warmup_steps: WarmupSteps = 100
    batch_size: BatchSize = 64
    seq_len: SeqLen = 256
    eval_every: int = Field(default=0, ge=0)
    """Quick evaluation every N steps (0: only at the end)."""
    eval_tokens: int = Field(default=4096, ge=1)
    """Tokens per language in the quick evaluations (the final one reads all held-out text)."""
    checkpoint_every: int = Field(default=500, ge=1)
    """Save a checkpoint every N steps (and always at the end and on Ctrl-C)."""
    log_every: int = Field(default=10, ge=1)
    """Write a train record to metrics.jsonl every N steps."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (cuda if present), cpu or cuda."""
    compile: bool = False
    """torch.compile the model (faster steps after a compile of tens of seconds)."""

    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "steps",
        "eval_every",
        "eval_tokens",
        "checkpoint_every",
        "log_every",
        "device",
        "compile",
        "corpus",
    )
    """Settings that may differ between a run and its --resume without changing its results."""
