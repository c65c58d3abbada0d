import os
from pathlib import Path

import pytest

from step_model import fileio


def test_writes_are_fsynced_unless_step_fsync_is_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STEP_FSYNC=0 (step-sim's simulation processes) skips fsync; the write is still the
    same atomic replace."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    fileio.atomic_write_text(tmp_path / "a.txt", "one")
    with fileio.atomic_directory(tmp_path / "d") as d:
        (d / "x").write_text("x")
    assert len(calls) >= 4  # file + folder, files in the new folder + folders
    calls.clear()
    monkeypatch.setenv(fileio.FSYNC_ENV, "0")
    fileio.atomic_write_text(tmp_path / "a.txt", "two")
    with fileio.atomic_directory(tmp_path / "e") as d:
        (d / "x").write_text("y")
    fileio.append_jsonl(tmp_path / "m.jsonl", {"k": 1})
    assert calls == []
    assert (tmp_path / "a.txt").read_text() == "two" and (tmp_path / "e" / "x").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d", "e", "m.jsonl"]  # no temps
