"""The settings of local training that every trainer shares: AdamW, its learning-rate schedule and
how batches are drawn.

Declared once, here, and inherited by the centralized trainer's ``TrainConfig`` (train.py), the
federation's ``FederationConfig`` (coordinator/config.py) and the round config a node receives
(``step_fed.protocol.RoundConfig``), so a bound or a meaning cannot drift between them. The peak
learning rate is not here: it is ``lr`` for one trainer and ``inner_lr`` (the inner optimizer's,
next to DiLoCo's ``outer_lr``) in a federation.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from step_common.typed_config import STRICT, YamlFloat


class LocalSchedule(BaseModel):
    model_config = STRICT
    min_lr_ratio: YamlFloat = Field(default=0.1, ge=0, le=1)
    """The cosine schedule ends at the peak learning rate x min_lr_ratio."""
    warmup_steps: int = Field(default=50, ge=0)
    """Linear warmup, in optimizer steps."""
    weight_decay: YamlFloat = Field(default=0.1, ge=0)
    """AdamW decoupled weight decay on matrices (not on norm weights)."""
    beta1: YamlFloat = Field(default=0.9, ge=0, lt=1)
    """AdamW's first-moment decay."""
    beta2: YamlFloat = Field(default=0.95, ge=0, lt=1)
    """AdamW's second-moment decay."""
    grad_clip: YamlFloat = Field(default=1.0, ge=0)
    """Clip the global gradient norm to this (0 disables)."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per optimizer step (per node in a federation)."""
    seq_len: int = Field(default=128, ge=1)
    """Tokens per sequence."""
    alpha: YamlFloat = Field(default=0.3, ge=0, le=1)
    """Language sampling temperature: p ~ bytes**alpha (1: in proportion to the text)."""
    seed: int = 0
    """Seeds the initial weights and the batches."""
