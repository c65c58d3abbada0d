"""A deployed ServerApp serves only the run step-coord recorded, from files of its own account."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.authorized_run import authorize
from coordinator.deployment import FederationFolder, ProcessState
from step_common.errors import StepError


def _federation(tmp_path: Path, run_id: int) -> tuple[Path, Path]:
    fed = FederationFolder(tmp_path / "fed")
    fed.state.mkdir(parents=True, mode=0o700)
    fed.root.chmod(0o700)
    ProcessState(1, "running", time.time(), "0.0.0.0:9092", 9093, run_id=run_id).save(fed)
    config = fed.root / "coordinator.yaml"
    config.write_text("federation: {}\n")
    config.chmod(0o600)
    return fed.root, config


def test_the_recorded_run_is_served(tmp_path: Path) -> None:
    root, config = _federation(tmp_path, run_id=5)
    authorize(root, 5, [config, root / "run"])


def test_another_run_is_refused(tmp_path: Path) -> None:
    root, config = _federation(tmp_path, run_id=5)
    with pytest.raises(StepError, match="run 6 is not the run step-coord started"):
        authorize(root, 6, [config], wait_s=0.5)


def test_files_others_can_write_are_refused(tmp_path: Path) -> None:
    root, config = _federation(tmp_path, run_id=5)
    config.chmod(0o666)  # anyone could have written this config
    with pytest.raises(StepError, match="does not belong to this account alone"):
        authorize(root, 5, [config])
