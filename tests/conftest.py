"""Shared fixtures: a small real corpus cut from STEP-35: real scripts, tests in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from step_model.corpus import head_lines

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "step35"
TINY_LANGS = ("de", "el", "et")


def shared_corpus() -> Path:
    root = Path(os.environ.get("STEP_CORPUS", SHARED)).resolve()
    assert (root / "train").is_dir(), f"STEP-35 corpus not found at {root}: set STEP_CORPUS"
    return root


def _cut(src: Path, dst: Path, n_bytes: int) -> None:
    """The first whole lines of src within n_bytes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(head_lines(src.read_text(encoding="utf-8"), n_bytes), encoding="utf-8")


@pytest.fixture(scope="session")
def step35() -> Path:
    return shared_corpus()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """de, el, et: 40 kB train, 6 kB valid, full udhr each; STEP-35 layout."""
    src = shared_corpus()
    root = tmp_path_factory.mktemp("tiny_corpus")
    for lang in TINY_LANGS:
        _cut(src / "train" / f"{lang}.txt", root / "train" / f"{lang}.txt", 40_000)
        _cut(src / "valid" / f"{lang}.txt", root / "valid" / f"{lang}.txt", 6_000)
        _cut(src / "udhr" / f"{lang}.txt", root / "udhr" / f"{lang}.txt", 10**9)
    (root / "MANIFEST.json").write_text('{"name": "tiny"}', encoding="utf-8")
    return root
