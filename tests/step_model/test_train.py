import itertools
import json
from pathlib import Path

import pytest
import torch

from step_common.errors import StepError
from step_common.model_options import build
from step_model.checkpoint import load_checkpoint
from step_model.train import Trainer, lr_at
from step_model.train_config import TrainConfig


def config(corpus: Path, **overrides: object) -> TrainConfig:
    base = dict(
        preset="debug",
        corpus=str(corpus),
        steps=6,
        batch_size=4,
        seq_len=32,
        warmup_steps=2,
        eval_tokens=256,
        checkpoint_every=3,
        log_every=1,
    )
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    lrs = [lr_at(s, peak=1.0, warmup=10, total=100, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lr_at(100, peak=1.0, warmup=10, total=100, min_ratio=0.1) == pytest.approx(0.1)


def test_a_run_writes_metrics_checkpoints_and_a_summary(tiny_corpus: Path, tmp_path: Path) -> None:
    summary = Trainer(config(tiny_corpus, eval_every=3), tmp_path / "run").run()
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 4 * 32
    assert set(summary["bpb"]) == {"de", "el", "et"} and 0 < summary["mean_bpb"] < 9
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["quick"] for r in records if r["kind"] == "eval"] == [True, False]
    assert load_checkpoint(tmp_path / "run").state["step"] == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 6


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    Trainer(config(tiny_corpus), tmp_path / "straight").run()
    # A crash right after step 4 (its metrics logged, its checkpoint not yet written), killed
    # mid-write: a line torn mid-append and a temporary of an atomic write left behind.
    _run_until(Trainer(config(tiny_corpus), tmp_path / "resumed"), 3)
    with open(tmp_path / "resumed" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "st')
    stale = tmp_path / "resumed" / ".summary.json.x1y2.tmp"
    stale.write_text("half")
    resumed = Trainer(config(tiny_corpus), tmp_path / "resumed", resume=True)
    assert resumed.step == 3
    resumed.run()
    assert not stale.exists()
    a = load_checkpoint(tmp_path / "straight").weights
    b = load_checkpoint(tmp_path / "resumed").weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing logged twice


def _run_until(trainer: Trainer, stop: int) -> None:
    """Run ``trainer`` and kill it right after the step-``stop`` checkpoint, as a crash would."""

    class Crash(Exception):
        pass

    def progress(step: int, stats: dict[str, float]) -> None:
        if step == stop + 1:
            raise Crash

    with pytest.raises(Crash):
        trainer.run(progress=progress)


def test_resume_refuses_changed_settings(tiny_corpus: Path, tmp_path: Path) -> None:
    Trainer(config(tiny_corpus, steps=3), tmp_path / "run").run()
    with pytest.raises(StepError, match=r"different settings \['lr'\]"):
        Trainer(config(tiny_corpus, steps=3, lr=1e-2), tmp_path / "run", resume=True)


def test_an_existing_run_is_not_overwritten(tiny_corpus: Path, tmp_path: Path) -> None:
    Trainer(config(tiny_corpus, steps=3), tmp_path / "run").run()
    with pytest.raises(StepError, match="--resume"):
        Trainer(config(tiny_corpus, steps=3), tmp_path / "run")
    with pytest.raises(StepError, match="no checkpoint"):
        Trainer(config(tiny_corpus), tmp_path / "fresh", resume=True)


def test_a_diverging_run_stops_with_advice(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(StepError, match="lower --lr"):
        Trainer(
            config(tiny_corpus, lr=1e6, warmup_steps=0, grad_clip=0.0, steps=20), tmp_path / "run"
        ).run()


def test_bad_settings_are_refused_naming_the_flag() -> None:
    """As `step-model train` builds its config from its options (step_common/model_options)."""
    with pytest.raises(StepError, match="--steps = 0: input should be greater than or equal"):
        build(TrainConfig, {"steps": 0}, {})
    with pytest.raises(StepError, match="--device = 'tpu': input should be 'auto', 'cpu'"):
        build(TrainConfig, {"device": "tpu"}, {})
    with pytest.raises(StepError, match=r"--min-lr-ratio = 2\.0: input should be less than"):
        build(TrainConfig, {"min_lr_ratio": 2.0}, {})
