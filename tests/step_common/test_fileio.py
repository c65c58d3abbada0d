import os
from pathlib import Path

import pytest

from step_common import fileio


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


def test_remove_tree_leaves_the_folder_whole_or_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill during the delete must not leave a half-deleted folder under the real name (a
    checkpoint missing some of the files its SHA256SUMS lists)."""
    ckpt = tmp_path / "round-000003"
    ckpt.mkdir()
    for name in ("SHA256SUMS", "model.safetensors", "optimizer.json"):
        (ckpt / name).write_text(name)

    def killed(path: Path, ignore_errors: bool = False) -> None:
        (Path(path) / "optimizer.json").unlink()  # part of the delete happened, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        fileio.remove_tree(ckpt)
    assert not ckpt.exists()  # the real name is gone in one step
    monkeypatch.undo()
    assert [p.name.startswith(".round-000003.") for p in tmp_path.iterdir()] == [True]
    fileio.remove_stale_temps(tmp_path)
    assert list(tmp_path.iterdir()) == []
    fileio.remove_tree(tmp_path / "never-there")  # nothing to remove is fine
