"""Where a resumed run continues from, settled before the SuperLink starts.

``step-coord start --resume`` continues from the checkpoint ``run/LATEST`` names. If that one
does not verify (a truncated ``model.safetensors``, a file edited after the federation signed
it, a ``LATEST`` naming a folder that is gone), it falls back to the newest checkpoint of the
run that does, says so loudly and records it in the audit log; ``--from CHECKPOINT`` picks one
by hand (one of ``run/checkpoints/``, or a signed copy from a backup, which is copied in).

A checkpoint verifies when every file matches its ``SHA256SUMS``, its config is readable, and
its ``SHA256SUMS.sig`` (written once the round is committed) is the federation key's signature.
A checkpoint of the run without a signature is accepted (the coordinator may have stopped
between writing it and signing it); one from outside the run must carry one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_text
from step_common.signatures import SIGNATURE_SUFFIX, verify_file
from step_model.checkpoint import FORMAT, LATEST, SUMS, verify_checkpoint


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    state: dict[str, Any]
    """The checkpoint's state.json: round, federation settings, totals, history."""
    skipped: dict[str, str]
    """Newer checkpoints that did not verify: name -> why."""
    chosen: bool
    """Named with --from (not the run's LATEST)."""

    @property
    def round(self) -> int:
        return int(self.state["round"])


def check(folder: Path, key: ed25519.Ed25519PublicKey, signed: bool) -> dict[str, Any]:
    """The state of the checkpoint in ``folder``; StepError saying why it cannot be used."""
    if not folder.is_dir():
        raise StepError(f"{folder} does not exist")
    verify_checkpoint(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        int(state["round"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StepError(f"{folder} holds no federated round ({e})") from None
    if config.get("format") != FORMAT:
        raise StepError(f"{folder} was written by another version (format {config.get('format')})")
    if signed or Path(f"{folder / SUMS}{SIGNATURE_SUFFIX}").exists():
        verify_file(key, folder / SUMS)
    return dict(state)


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first (names are round-NNNNNN)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  reverse=True)  # fmt: skip


def latest_named(run_dir: Path) -> Path:
    return run_dir / (run_dir / LATEST).read_text(encoding="utf-8").strip()


def resume_point(
    run_dir: Path, key: ed25519.Ed25519PublicKey, chosen: Path | None = None
) -> ResumePoint:
    """Check (and where needed repoint ``LATEST`` at) the checkpoint a resume starts from."""
    if chosen is not None:
        return _chosen(run_dir, key, chosen.resolve())
    named = latest_named(run_dir)
    skipped: dict[str, str] = {}
    try:
        return ResumePoint(named, check(named, key, signed=False), {}, False)
    except StepError as e:
        skipped[named.name] = str(e)
    for folder in run_checkpoints(run_dir):
        if folder.name in skipped:
            continue
        try:
            state = check(folder, key, signed=False)
        except StepError as e:
            skipped[folder.name] = str(e)
            continue
        _point_latest(run_dir, folder)
        return ResumePoint(folder, state, skipped, False)
    reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    raise StepError(
        f"no checkpoint of {run_dir} verifies ({reasons}): restore one from a backup and pass "
        "it with `step-coord start --resume --from CHECKPOINT`, or move the run folder away "
        "to start over"
    )


def _chosen(run_dir: Path, key: ed25519.Ed25519PublicKey, folder: Path) -> ResumePoint:
    inside = folder.parent == (run_dir / "checkpoints").resolve()
    try:
        state = check(folder, key, signed=not inside)
    except StepError as e:
        raise StepError(f"--from {folder} cannot be used: {e}") from None
    if not inside:  # a copy from a backup: it joins the run's checkpoints
        target = run_dir / "checkpoints" / folder.name
        if target.exists():
            raise StepError(
                f"--from {folder}: the run already has a checkpoint named {folder.name}; pass "
                f"that one ({target}) or move it away first"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(target) as tmp:
            for f in folder.iterdir():
                shutil.copy2(f, tmp / f.name)
        folder = target
    _point_latest(run_dir, folder)
    return ResumePoint(folder, state, {}, True)


def _point_latest(run_dir: Path, folder: Path) -> None:
    atomic_write_text(run_dir / LATEST, f"checkpoints/{folder.name}\n")
