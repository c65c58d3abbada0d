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

import math
from dataclasses import dataclass
from typing import Any

from step_common.errors import StepError

ACCOUNTANTS = ("rdp", "prv")
MODES = ("ghost", "hooks")
KEYS = ("epsilon", "delta", "noise_multiplier", "rounds", "max_grad_norm", "accountant", "mode")


@dataclass(frozen=True)
class PrivacyConfig:
    epsilon: float
    """Total epsilon this node will spend on its data, over every round it ever trains."""
    delta: float
    """The delta of the (epsilon, delta) guarantee; well below 1 / number of sequences."""
    noise_multiplier: float | None = None
    """sigma: noise std / clipping bound. None: derived from ``rounds`` and the budget."""
    rounds: int | None = None
    """Rounds the node plans to join; each round's sigma spreads what is left of the budget
    evenly over the planned rounds that remain."""
    max_grad_norm: float = 1.0
    """C: every sequence's gradient is clipped to this L2 norm."""
    accountant: str = "rdp"
    mode: str = "ghost"

    def unit(self, seq_len: int) -> str:
        return f"one training sequence of {seq_len} tokens"


def privacy_from_dict(data: Any, where: str) -> PrivacyConfig | None:
    """Parse and check a ``privacy`` mapping (None or absent: no local DP)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise StepError(f"{where}: privacy must be a mapping with epsilon and delta, or null")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise StepError(f"{where}: unknown keys privacy.{unknown}; allowed: {list(KEYS)}")
    for key in ("epsilon", "delta"):
        if key not in data:
            raise StepError(
                f"{where}: privacy.{key} is missing: a DP budget needs both epsilon and "
                "delta (e.g. epsilon: 8.0, delta: 1.0e-6)"
            )
    epsilon = _number(data, "epsilon", where)
    if not epsilon > 0:
        raise StepError(f"{where}: privacy.epsilon = {epsilon!r} must be a positive number")
    delta = _number(data, "delta", where)
    if not 0 < delta < 1:
        raise StepError(
            f"{where}: privacy.delta = {delta!r} must be in (0, 1), and below 1 / (number "
            "of training sequences): e.g. 1.0e-6"
        )
    sigma = data.get("noise_multiplier")
    rounds = data.get("rounds")
    if (sigma is None) == (rounds is None):
        raise StepError(
            f"{where}: give exactly one of privacy.noise_multiplier (a fixed sigma) and "
            "privacy.rounds (the rounds you plan to join; sigma is derived from the budget)"
        )
    if sigma is not None:
        sigma = _number(data, "noise_multiplier", where)
        if not sigma > 0:
            raise StepError(f"{where}: privacy.noise_multiplier = {sigma!r} must be positive")
    bad_rounds = isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1
    if rounds is not None and bad_rounds:
        raise StepError(f"{where}: privacy.rounds = {rounds!r} must be a positive integer")
    clip = _number(data, "max_grad_norm", where, default=1.0)
    if not clip > 0:
        raise StepError(f"{where}: privacy.max_grad_norm = {clip!r} must be positive")
    accountant = data.get("accountant", "rdp")
    if accountant not in ACCOUNTANTS:
        raise StepError(f"{where}: privacy.accountant = {accountant!r}: choose rdp or prv")
    if accountant == "prv" and sigma is not None and sigma < 0.3:
        raise StepError(
            f"{where}: privacy.noise_multiplier = {sigma!r} is too small for the prv "
            "accountant (it needs >= 0.3): raise it or use accountant: rdp"
        )
    mode = data.get("mode", "ghost")
    if mode not in MODES:
        raise StepError(f"{where}: privacy.mode = {mode!r}: choose ghost or hooks")
    return PrivacyConfig(epsilon, delta, sigma, rounds, clip, str(accountant), str(mode))


def _number(data: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StepError(f"{where}: privacy.{key} = {value!r} must be a number")
    return float(value)
