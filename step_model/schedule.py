"""The settings of local training that every trainer shares: AdamW, its learning-rate schedule and
how batches are drawn.

Declared once, here, and inherited by the centralized trainer's ``TrainConfig`` (train.py), the
federation's ``FederationConfig`` (coordinator/config.py) and the round config a node receives
(``step_fed.protocol.RoundConfig``), so a bound or a meaning cannot drift between them. The peak
learning rate is not here: it is ``lr`` for one trainer and ``inner_lr`` (the inner optimizer's,
next to DiLoCo's ``outer_lr``) in a federation.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from step_common.typed_config import STRICT, YamlFloat

# Each setting once: its type, bounds and meaning. A trainer that needs another default (the
# centralized one trains bigger batches than a node) re-states only the default, by this type.
MinLrRatio = Annotated[
    YamlFloat,
    Field(
        ge=0,
        le=1,
        description=("The cosine schedule ends at the peak learning rate x min_lr_ratio."),
    ),
]
WarmupSteps = Annotated[int, Field(ge=0, description="Linear warmup, in optimizer steps.")]
WeightDecay = Annotated[
    YamlFloat,
    Field(ge=0, description=("AdamW decoupled weight decay on matrices (not on norm weights).")),
]
Beta1 = Annotated[YamlFloat, Field(ge=0, lt=1, description="AdamW's first-moment decay.")]
Beta2 = Annotated[YamlFloat, Field(ge=0, lt=1, description="AdamW's second-moment decay.")]
GradClip = Annotated[
    YamlFloat, Field(ge=0, description=("Clip the global gradient norm to this (0 disables)."))
]
BatchSize = Annotated[
    int, Field(ge=1, description=("Sequences per optimizer step (per node in a federation)."))
]
SeqLen = Annotated[int, Field(ge=1, description="Tokens per sequence.")]
Alpha = Annotated[
    YamlFloat,
    Field(
        ge=0,
        le=1,
        description=(
            "Language sampling temperature: p ~ bytes**alpha (0: uniform, 1: in proportion to the "
            "text)."
        ),
    ),
]
Seed = Annotated[int, Field(description="Seeds the initial weights and the batches.")]


class LocalSchedule(BaseModel):
    """The shared settings, with a federation node's defaults."""

    model_config = STRICT
    min_lr_ratio: MinLrRatio = 0.1
    warmup_steps: WarmupSteps = 50
    weight_decay: WeightDecay = 0.1
    beta1: Beta1 = 0.9
    beta2: Beta2 = 0.95
    grad_clip: GradClip = 1.0
    batch_size: BatchSize = 8
    seq_len: SeqLen = 128
    alpha: Alpha = 0.3
    seed: Seed = 0

    def shared_schedule(self) -> dict[str, Any]:
        """The values of the fields declared here (e.g. to build a round config from the
        federation's settings)."""
        return {name: getattr(self, name) for name in LocalSchedule.model_fields}
