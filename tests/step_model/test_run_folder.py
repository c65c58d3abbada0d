"""The run folder (step_model/run_folder.py): commit, resume after a crash, clean up."""

import json
from pathlib import Path

import pytest

from step_common.errors import StepError
from step_model.checkpoint import LATEST, Checkpoint, seeded_weights
from step_model.config import preset
from step_model.run_folder import RunFolder
from step_model.tokenizer import ByteTokenizer

WEIGHTS = seeded_weights(preset("debug"), 0)


def commit(folder: RunFolder, n: int) -> Path:
    return folder.save(Checkpoint(preset("debug"), WEIGHTS, ByteTokenizer(), {folder.unit: n}))


def crashed_run(tmp_path: Path) -> tuple[RunFolder, list[str]]:
    """A run killed after logging step 5 whose last commit is step 3: a torn last line, a
    temporary of metrics.jsonl and a half-written checkpoint folder left behind. Returns the
    folder and the lines a resume must keep."""
    folder = RunFolder(tmp_path / "run", "step", digits=8)
    for step in (2, 3):
        commit(folder, step)
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) for s in range(1, 6)]
    lines.insert(0, json.dumps({"kind": "note"}))  # untagged: belongs before any step
    text = "\n".join(lines) + '\n{"kind": "train", "st'  # killed mid-append
    (folder.path / "metrics.jsonl").write_text(text, encoding="utf-8")
    (folder.path / ".metrics.jsonl.k3x9.tmp").write_text("half", encoding="utf-8")
    (folder.path / "checkpoints" / ".step-00000004.a1b2.tmp").mkdir()
    return folder, lines[:4]


def test_resume_cuts_the_metrics_back_to_the_committed_step(tmp_path: Path) -> None:
    folder, kept = crashed_run(tmp_path)
    ckpt = folder.resume(lambda c: None)
    assert ckpt.state == {"step": 3}
    # steps 4 and 5 will be logged again, the torn line never parsed: each line kept verbatim
    assert (folder.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines() == kept


def test_prepare_removes_what_a_killed_write_left(tmp_path: Path) -> None:
    folder, _ = crashed_run(tmp_path)
    removed = folder.prepare()
    assert sorted(p.name for p in removed) == [".metrics.jsonl.k3x9.tmp", ".step-00000004.a1b2.tmp"]
    assert sorted(p.name for p in (folder.path / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000003",
    ]
    assert not list(folder.path.glob(".*"))


def test_a_refused_checkpoint_changes_nothing(tmp_path: Path) -> None:
    folder, _ = crashed_run(tmp_path)
    before = (folder.path / "metrics.jsonl").read_text(encoding="utf-8")

    def refuse(ckpt: Checkpoint) -> None:
        raise StepError("other settings")

    with pytest.raises(StepError, match="other settings"):
        folder.resume(refuse)
    assert (folder.path / "metrics.jsonl").read_text(encoding="utf-8") == before


def test_commits_are_named_by_their_counter_and_only_the_newest_kept(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run", "round", digits=6, keep=2)
    for r in (1, 2, 3):
        path = commit(folder, r)
    assert path == folder.path / "checkpoints" / "round-000003"
    assert (folder.path / LATEST).read_text().strip() == "checkpoints/round-000003"
    assert sorted(p.name for p in path.parent.iterdir()) == ["round-000002", "round-000003"]


def test_a_new_run_never_overwrites_and_a_resume_needs_a_commit(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run", "step", digits=8)
    words = {"occupied": "taken", "empty": "nothing here"}
    folder.check_start(False, **words)
    with pytest.raises(StepError, match="nothing here"):
        folder.check_start(True, **words)
    commit(folder, 1)
    folder.check_start(True, **words)
    with pytest.raises(StepError, match="taken"):
        folder.check_start(False, **words)
