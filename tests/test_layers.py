"""The package layers (pyproject.toml [tool.importlinter]) hold, and breaking one is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "imports", "broken"),
    [
        ("step_model/model.py", "import flwr", "The model family is plain PyTorch"),
        ("step_model/train.py", "import opacus", "The model family is plain PyTorch"),
        ("node/client_app.py", "import coordinator.rounds", "Layers"),
        ("coordinator/rounds.py", "from node import ledger", "Layers"),
        ("step_fed/protocol.py", "import coordinator", "Federation-common knows no"),
        ("step_launch/processes.py", "import step_sim", "Layers"),
        ("step_corpus/build.py", "import torch", "The corpus builder stands alone"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, imports: str, broken: str
) -> None:
    """The contracts run on a skeleton of the tree (every package, one module with the
    forbidden import); they must report exactly that contract broken."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for package in config["root_packages"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for external in ("flwr", "opacus", "torch", "ray"):
        (tmp_path / external).mkdir()
        (tmp_path / external / "__init__.py").write_text("")
    target = tmp_path / module
    target.write_text(imports + "\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    broken_lines = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(broken) for line in broken_lines), result.stdout
