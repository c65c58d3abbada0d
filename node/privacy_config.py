"""A node's local differential-privacy settings: the ``privacy:`` section of node.yaml (or of a
simulation config, for every institution or for one).

    privacy:
      epsilon: 8.0            # total budget for this node's data over the whole federation
      delta: 1.0e-6           # must be below 1 / (number of training sequences)
      noise_multiplier: 0.9   # either a fixed noise multiplier sigma ...
      rounds: 20              # ... or the rounds this node plans to join: sigma is derived
      max_grad_norm: 1.0      # per-sequence clipping bound C
      accountant: rdp         # rdp or prv (Opacus accountants)
      mode: ghost             # ghost (fast gradient clipping) or hooks (per-sample gradients)

The privacy unit is one training sequence (``seq_len`` tokens of one language): the node's text
is cut into fixed, non-overlapping sequences and DP-SGD samples each one independently (Poisson)
at every step. See the README ("Privacy") for what this does and does not cover.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from step_common.typed_config import STRICT, YamlFloat, parse_section


class PrivacyConfig(BaseModel):
    model_config = STRICT
    epsilon: YamlFloat = Field(gt=0, allow_inf_nan=False)
    """Total epsilon this node will spend on its data, over every round it ever trains."""
    delta: YamlFloat = Field(gt=0, lt=1)
    """The delta of the (epsilon, delta) guarantee; well below 1 / number of sequences (e.g.
    1.0e-6)."""
    noise_multiplier: YamlFloat | None = Field(default=None, gt=0, allow_inf_nan=False)
    """sigma: noise std / clipping bound. None: derived from ``rounds`` and the budget."""
    rounds: int | None = Field(default=None, ge=1)
    """Rounds the node plans to join; each round's sigma spreads what is left of the budget
    evenly over the planned rounds that remain."""
    max_grad_norm: YamlFloat = Field(default=1.0, gt=0, allow_inf_nan=False)
    """C: every sequence's gradient is clipped to this L2 norm."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus accountant: rdp (Renyi DP) or prv (privacy random variables, tighter)."""
    mode: Literal["ghost", "hooks"] = "ghost"
    """ghost (fast gradient clipping) or hooks (per-sample gradients)."""

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        # ValueError (not StepError): pydantic then names the key path of this mapping.
        if (self.noise_multiplier is None) == (self.rounds is None):
            raise ValueError(
                "give exactly one of noise_multiplier (a fixed sigma) and rounds (the rounds "
                "you plan to join; sigma is derived from the budget)"
            )
        sigma = self.noise_multiplier
        if self.accountant == "prv" and sigma is not None and sigma < 0.3:
            raise ValueError(
                f"noise_multiplier {sigma!r} is too small for the prv accountant (it needs "
                ">= 0.3): raise it or use accountant: rdp"
            )
        return self

    def unit(self, seq_len: int) -> str:
        return f"one training sequence of {seq_len} tokens"


def privacy_from_dict(data: Any, where: str, section: str = "privacy") -> PrivacyConfig | None:
    """Parse and check a ``privacy`` mapping (None or absent: no local DP)."""
    if data is None:
        return None
    return parse_section(PrivacyConfig, data, where, section)
