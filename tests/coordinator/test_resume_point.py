"""A resume starts from a checkpoint that verifies, chosen before the SuperLink starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ed25519

from coordinator.config import FederationConfig
from coordinator.resume_point import resume_point
from step_common.errors import StepError
from step_common.signatures import sign_file
from step_model.checkpoint import LATEST, SUMS, Checkpoint, save_in_run
from step_model.config import preset
from step_model.tokenizer import ByteTokenizer

KEY = ed25519.Ed25519PrivateKey.generate()


def _run(tmp: Path, rounds: int = 3) -> Path:
    run = tmp / "run"
    weights = {"w": torch.zeros(4)}
    for r in range(1, rounds + 1):
        state = {"round": r, "federation": FederationConfig().to_dict()}
        folder = save_in_run(run, f"round-{r:06d}", Checkpoint(preset("debug"), weights,
                             ByteTokenizer(), state), keep=5)  # fmt: skip
        sign_file(KEY, folder / SUMS)
    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def test_a_verifying_latest_is_used_as_it_is(tmp_path: Path) -> None:
    run = _run(tmp_path)
    point = resume_point(run, KEY.public_key())
    assert (point.checkpoint.name, point.round, point.skipped) == ("round-000003", 3, {})


def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_that_verifies(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path)
    _truncate(run / "checkpoints" / "round-000003" / "model.safetensors")
    point = resume_point(run, KEY.public_key())
    assert point.round == 2 and list(point.skipped) == ["round-000003"]
    assert "truncated" in point.skipped["round-000003"]
    assert (run / LATEST).read_text().strip() == "checkpoints/round-000002"


def test_latest_naming_a_deleted_folder_falls_back(tmp_path: Path) -> None:
    run = _run(tmp_path)
    shutil.rmtree(run / "checkpoints" / "round-000003")
    (run / LATEST).write_text("checkpoints/round-000003\n")
    assert resume_point(run, KEY.public_key()).round == 2


def test_a_checkpoint_signed_by_another_key_is_skipped(tmp_path: Path) -> None:
    run = _run(tmp_path)
    sign_file(ed25519.Ed25519PrivateKey.generate(), run / "checkpoints" / "round-000003" / SUMS)
    point = resume_point(run, KEY.public_key())
    assert point.round == 2 and "not signed by the federation key" in point.skipped["round-000003"]


def test_nothing_verifies_says_how_to_go_on(tmp_path: Path) -> None:
    run = _run(tmp_path, rounds=2)
    for r in (1, 2):
        _truncate(run / "checkpoints" / f"round-00000{r}" / "model.safetensors")
    with pytest.raises(StepError, match=r"no checkpoint of .* verifies .*--from CHECKPOINT"):
        resume_point(run, KEY.public_key())


def test_from_a_run_checkpoint_and_from_a_signed_backup(tmp_path: Path) -> None:
    run = _run(tmp_path)
    point = resume_point(run, KEY.public_key(), run / "checkpoints" / "round-000001")
    assert point.chosen and point.round == 1
    assert (run / LATEST).read_text().strip() == "checkpoints/round-000001"

    backup = tmp_path / "backup" / "round-000007"
    shutil.copytree(run / "checkpoints" / "round-000002", backup)
    point = resume_point(run, KEY.public_key(), backup)
    assert point.checkpoint == run / "checkpoints" / "round-000007"  # copied into the run
    assert (run / LATEST).read_text().strip() == "checkpoints/round-000007"


def test_an_unsigned_backup_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path)
    backup = tmp_path / "backup" / "round-000009"
    shutil.copytree(run / "checkpoints" / "round-000002", backup)
    Path(f"{backup / SUMS}.sig").unlink()
    with pytest.raises(StepError, match=r"--from .* cannot be used: .*missing"):
        resume_point(run, KEY.public_key(), backup)
    assert not (run / "checkpoints" / "round-000009").exists()
    assert (run / LATEST).read_text().strip() == "checkpoints/round-000003"


def test_step_coord_says_the_fallback_loudly_and_audits_it(tmp_path: Path) -> None:
    from rich.console import Console
    from typer.testing import CliRunner

    from coordinator.audit import AuditLog
    from coordinator.cli import _check_resume_point
    from coordinator.cli import app as coord
    from coordinator.config import load_federation_config
    from coordinator.deployment import FederationFolder
    from step_common.signatures import load_signing_key

    assert CliRunner().invoke(coord, ["init", str(tmp_path / "fed")]).exit_code == 0
    fed = FederationFolder(tmp_path / "fed")
    cfg = load_federation_config(fed.config)
    key = load_signing_key(fed.signing_key)
    for r in (1, 2):
        state = {"round": r, "federation": cfg.to_dict()}
        folder = save_in_run(fed.run, f"round-{r:06d}", Checkpoint(preset("debug"),
                             {"w": torch.zeros(4)}, ByteTokenizer(), state))  # fmt: skip
        sign_file(key, folder / SUMS)
    _truncate(fed.run / "checkpoints" / "round-000002" / "model.safetensors")
    console = Console(record=True, width=200)
    _check_resume_point(fed, cfg, key, None, console)
    said = console.export_text()
    assert "WARNING: checkpoint round-000002 cannot be used" in said
    assert "resuming from round-000001 (round 1), the newest that verifies" in said
    rewind = [e for e in AuditLog(fed.root).entries() if e["action"] == "rewind"]
    assert rewind[0]["details"]["round"] == 1

    other = FederationConfig(**{**cfg.to_dict(), "inner_lr": cfg.inner_lr * 2})
    with pytest.raises(StepError, match="different federation settings"):
        _check_resume_point(fed, other, key, None, console)
