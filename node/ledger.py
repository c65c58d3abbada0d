"""The node's privacy ledger: every DP-SGD round it ever ran on its data, and the budget check.

``<state_dir>/privacy/ledger.json`` holds one entry per round trained (noise multiplier sigma,
sample rate q, steps) and the rounds it refused. Epsilon is never stored as the truth: it is
recomputed from the whole history of mechanisms with an Opacus accountant (RDP or PRV) at the
configured delta, so one accountant composes every round a node has trained, across restarts
(one accountant per round would reset epsilon to zero and under-report).

The ledger is written atomically and carries the SHA-256 of its content and, on a deployed
node, the signature of its content by the node's own key (``node.key``, ECDSA P-384, readable
by the node's account alone): a corrupted or hand-edited ledger is refused (training stops, the
file is left untouched), since deleting or editing it is the one way to lose track of the
privacy already spent. A SHA-256 anyone can recompute; the signature only the node's key can
make, and a deployed node accepts no ledger without it.

A round is entered *before* it trains: a node that crashes mid-round has still spent it.

Deleting the ledger does not reset the budget quietly: the first save also leaves a marker in
the state folder (``.privacy-ledger``), and a node whose marker is there but whose ledger is
not refuses to train until its operator runs ``step-node privacy reset``, which starts a new
ledger that records the reset. (Deleting the whole state folder is caught by the coordinator:
the node then reports less epsilon than before, and its update is refused.)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from node.privacy_config import PrivacyConfig
from step_common.errors import StepError
from step_common.fileio import atomic_write_text, file_lock
from step_fed.identity import NodeSigner

FORMAT = "step-privacy-ledger/1"
Mechanism = tuple[float, float, int]
"""(noise multiplier sigma, sample rate q, steps): Opacus' accountant history entry."""
RDP_ORDERS = (
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 96, 128, 256, 512, 1024]
)
SIGMA_RANGE = (0.05, 1000.0)
"""Where a derived sigma is searched; above 1000 an update is pure noise."""
PRV_MIN_SIGMA = 0.3
"""Below this the PRV accountant's grids take gigabytes (and DP-SGD guarantees little)."""


class PrivacyBudgetExhausted(StepError):
    """The round would take the node past its epsilon: it refuses and trains nothing."""


def epsilon_of(history: list[Mechanism], delta: float, accountant: str) -> float:
    """Epsilon(delta) of the composition of every mechanism in ``history``.

    RDP: what Opacus' ``RDPAccountant`` computes (RDP of each mechanism, summed, converted at
    the best order), with each mechanism's RDP cached (the sigma search re-composes the same
    history many times) and a few larger orders beside Opacus' defaults, which can only tighten
    the bound for heavily noised rounds; where the defaults hold the optimum the value is
    Opacus' own (sigma 1.5, q 0.04, 2250 steps, delta 1e-5: 7.329). PRV: Opacus'
    ``PRVAccountant`` (a numerical estimate within 0.01)."""
    if not history:
        return 0.0
    if accountant == "rdp":
        rdp = np.sum([_rdp(*m) for m in history], axis=0)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
        return float(eps)
    acc = PRVAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=4096)
def _rdp(sigma: float, sample_rate: float, steps: int) -> np.ndarray:
    """(orders,) RDP of ``steps`` subsampled Gaussian steps."""
    return np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=sigma, steps=steps, orders=RDP_ORDERS
        )
    )


def derive_sigma(
    history: list[Mechanism],
    sample_rate: float,
    steps: int,
    target: float,
    delta: float,
    accountant: str,
) -> float | None:
    """The smallest sigma (to 0.1 %) such that ``history`` followed by ``steps`` DP-SGD steps at
    sample rate q and sigma stays within epsilon ``target``; None if even sigma 1000 does not.

    The search runs on RDP (cheap at any sigma); for PRV, which is tighter than RDP, it is
    refined between half the RDP answer and the RDP answer (PRV at very small sigmas takes
    gigabytes, so it is never probed there)."""

    def fits(sigma: float, name: str) -> bool:
        with warnings.catch_warnings():
            # Probing extreme sigmas puts the optimum at the edge of the RDP orders (the bound
            # is then looser, never wrong); plan() re-checks the sigma it gets.
            warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
            return epsilon_of([*history, (sigma, sample_rate, steps)], delta, name) <= target

    def bisect(lo: float, hi: float, name: str) -> float:
        while hi / lo > 1.001:  # in log space: ~10-25 accountant calls
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if fits(mid, name) else (mid, hi)
        return hi

    # Bracket the answer starting from the usual range (extreme sigmas are slow to account).
    lo, hi = 0.5, 2.0
    while not fits(hi, "rdp"):
        if hi >= SIGMA_RANGE[1]:
            return None
        lo, hi = hi, min(hi * 4, SIGMA_RANGE[1])
    while fits(lo, "rdp"):
        if lo <= SIGMA_RANGE[0]:
            return lo
        lo, hi = max(lo / 4, SIGMA_RANGE[0]), lo
    sigma = bisect(lo, hi, "rdp")
    if accountant == "prv":
        floor = max(PRV_MIN_SIGMA, sigma / 2)
        sigma = floor if fits(floor, "prv") else bisect(floor, sigma, "prv")
    return sigma


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    records: int
    """Training sequences the node held (q = expected batch / records)."""
    epsilon: float
    """Epsilon spent after this round, at the delta and accountant of that time."""
    delta: float
    time: str

    @property
    def mechanism(self) -> Mechanism:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass
class PrivacyLedger:
    path: Path
    node: str
    unit: str = ""
    entries: list[LedgerEntry] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    resets: list[dict[str, Any]] = field(default_factory=list)
    """Each ``step-node privacy reset``: when, and what the operator was told it means."""
    signer: NodeSigner | None = None
    """The node's key (a deployed node): the ledger must carry its signature."""

    # --- persistence ---------------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path, node: str, signer: NodeSigner | None = None) -> PrivacyLedger:
        path = Path(state_dir) / "privacy" / "ledger.json"
        if not path.exists():
            if _marker(path).exists():
                raise StepError(
                    f"privacy ledger {path} is missing, but this node kept one before "
                    f"({_marker(path)}): without it the privacy already spent is unknown. "
                    "Restore it from your backup, or run `step-node privacy reset` (the budget "
                    "then starts from zero and the reset is recorded)"
                )
            return cls(path, node, signer=signer)
        fix = (
            "restore the ledger from your backup; never edit or delete it (that would lose "
            "track of the privacy already spent)"
        )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            stored = doc.pop("sha256")
            signature = doc.pop("signature", None)
            doc.pop("signed_by", None)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r} is not {FORMAT}")
            entries = [LedgerEntry(**e) for e in doc["entries"]]
            refusals = list(doc["refusals"])
            resets = list(doc.get("resets", []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StepError(f"privacy ledger {path} is unreadable ({e}): {fix}") from None
        if _digest(doc) != stored:
            raise StepError(
                f"privacy ledger {path} was changed outside step-node (SHA-256 mismatch): {fix}"
            )
        if signer is not None and (
            not isinstance(signature, str) or not signer.verify(_canonical(doc), signature)
        ):
            raise StepError(
                f"privacy ledger {path} is not signed by this node's key {signer.fingerprint} "
                f"(changed outside step-node, or unsigned): {fix}"
            )
        if doc.get("node") != node:
            raise StepError(
                f"privacy ledger {path} belongs to node {doc.get('node')!r}, not {node!r}: "
                "each node needs its own state_dir"
            )
        return cls(path, node, str(doc.get("unit", "")), entries, refusals, resets, signer)

    @staticmethod
    @contextmanager
    def locked(state_dir: Path) -> Iterator[None]:
        """Hold the ledger's lock: load, plan and record inside it, so two processes on one
        state folder (a node started twice) cannot both write and lose an entry."""
        with file_lock(Path(state_dir) / ".privacy.lock"):
            yield

    @classmethod
    def reset(cls, state_dir: Path, node: str, signer: NodeSigner | None = None) -> PrivacyLedger:
        """A new, empty ledger in place of a missing or damaged one; the reset is recorded in
        it (the old file, if any, is kept beside it)."""
        path = Path(state_dir) / "privacy" / "ledger.json"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if path.exists():
            path.replace(path.with_name(f"ledger.replaced-{int(time.time())}.json"))
        ledger = cls(path, node, resets=[{"time": stamp, "meaning": RESET_MEANING}],
                     signer=signer)  # fmt: skip
        ledger.save()
        return ledger

    def save(self) -> None:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "node": self.node,
            "unit": self.unit,
            "entries": [asdict(e) for e in self.entries],
            "refusals": self.refusals,
        }
        if self.resets:
            doc["resets"] = self.resets
        body = dict(doc)
        doc["sha256"] = _digest(body)
        if self.signer is not None:
            doc["signed_by"] = self.signer.fingerprint
            doc["signature"] = self.signer.sign(_canonical(body))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(doc, indent=1) + "\n")
            if not _marker(self.path).exists():
                atomic_write_text(_marker(self.path), f"{self.node}: a privacy ledger is kept\n")
        except OSError as e:
            raise StepError(
                f"cannot write the privacy ledger {self.path} ({e}): check the state "
                "folder's permissions and free space; the round was not trained"
            ) from None

    # --- accounting ----------------------------------------------------------------------------

    def mechanisms(self) -> list[Mechanism]:
        return [e.mechanism for e in self.entries]

    def pinned_delta(self, cfg: PrivacyConfig) -> float:
        """Delta is fixed for the life of a ledger: that of its first round. A larger delta
        would make the rounds already trained count for less epsilon."""
        return self.entries[0].delta if self.entries else cfg.delta

    def spent(self, cfg: PrivacyConfig) -> float:
        return epsilon_of(self.mechanisms(), self.pinned_delta(cfg), cfg.accountant)

    def plan(
        self, cfg: PrivacyConfig, round_: int, expected_batch: int, steps: int, records: int
    ) -> LedgerEntry:
        """This round's mechanism and the epsilon it would bring the node to; raises
        ``PrivacyBudgetExhausted`` (refuse the round) or ``StepError`` (settings that cannot
        work). Writes nothing."""
        self._check_plannable(cfg, expected_batch, records)
        q = expected_batch / records
        history = self.mechanisms()
        spent = epsilon_of(history, cfg.delta, cfg.accountant)
        sigma = self._round_sigma(cfg, round_, history=history, q=q, steps=steps, spent=spent)
        after = epsilon_of([*history, (sigma, q, steps)], cfg.delta, cfg.accountant)
        if after > cfg.epsilon:
            if not history:
                raise StepError(
                    f"node {self.node}: privacy.epsilon = {cfg.epsilon:g} cannot be met by "
                    f"even one round ({steps} steps at noise multiplier {sigma:.3g}, sample "
                    f"rate {q:.3g} cost epsilon {after:.3g}): raise privacy.epsilon or "
                    "privacy.noise_multiplier, or ask for fewer inner steps / a smaller batch"
                )
            raise PrivacyBudgetExhausted(
                f"node {self.node} refuses round {round_}: it would bring epsilon to "
                f"{after:.3f}, over the budget {cfg.epsilon:g} (spent so far {spent:.3f} in "
                f"{len(history)} rounds); nothing was trained"
            )
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return LedgerEntry(round_, sigma, q, steps, records, after, cfg.delta, stamp)

    def _check_plannable(self, cfg: PrivacyConfig, expected_batch: int, records: int) -> None:
        """StepError for settings no round can be planned with: a batch larger than the data,
        a delta of 1 / records or more, or a delta other than the ledger's."""
        if records < 1 or expected_batch > records:
            raise StepError(
                f"node {self.node}: the batch of {expected_batch} sequences is larger than "
                f"the {records} training sequences the node holds: lower batch_size or add text"
            )
        if cfg.delta >= 1 / records:
            suggest = 10 ** math.floor(math.log10(0.1 / records))
            raise StepError(
                f"node {self.node}: privacy.delta = {cfg.delta:g} must be below 1 / N = "
                f"{1 / records:.3g} (N = {records} training sequences), or one sequence may "
                f"leak outright: lower delta, e.g. to {suggest:g}"
            )
        if cfg.delta != self.pinned_delta(cfg):
            raise StepError(
                f"node {self.node}: privacy.delta = {cfg.delta:g}, but this ledger was started "
                f"at delta {self.pinned_delta(cfg):g} and delta is fixed for its life (a larger "
                "delta would make the rounds already trained count for less epsilon): set "
                f"privacy.delta back to {self.pinned_delta(cfg):g}"
            )

    def _round_sigma(
        self,
        cfg: PrivacyConfig,
        round_: int,
        *,
        history: list[Mechanism],
        q: float,
        steps: int,
        spent: float,
    ) -> float:
        """The configured noise multiplier, or the smallest that spreads what is left of the
        budget over the planned rounds left (``PrivacyBudgetExhausted`` when none are left)."""
        if cfg.noise_multiplier is not None:
            return cfg.noise_multiplier
        assert cfg.rounds is not None
        remaining = cfg.rounds - len(self.entries)
        if remaining < 1:
            raise PrivacyBudgetExhausted(
                f"node {self.node} refuses round {round_}: it has trained the "
                f"{cfg.rounds} rounds it planned (privacy.rounds), spending epsilon "
                f"{spent:.3f} of {cfg.epsilon:g}; nothing was trained"
            )
        found = derive_sigma(history, q, steps * remaining, cfg.epsilon, cfg.delta,
                             cfg.accountant)  # fmt: skip
        return found if found is not None else SIGMA_RANGE[1]

    def record(self, entry: LedgerEntry, unit: str) -> None:
        """Enter a round before it trains (durable before any of the data is touched)."""
        self.entries.append(entry)
        self.unit = unit
        self.save()

    def refuse(self, round_: int, reason: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.refusals.append({"round": round_, "reason": reason, "time": stamp})
        self.save()


RESET_MEANING = (
    "the budget starts again from zero; the privacy already spent on this data is not undone, "
    "and the coordinator refuses updates reporting less epsilon than before until its admin "
    "accepts the reset (`step-coord accept-reset`)"
)


def _marker(ledger: Path) -> Path:
    """``<state_dir>/.privacy-ledger``: outside the privacy folder, so deleting that folder
    leaves it behind."""
    return ledger.parent.parent / ".privacy-ledger"


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(doc)).hexdigest()
