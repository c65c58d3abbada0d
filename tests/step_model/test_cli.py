"""The step-model command line: --json contracts, one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from step_model.cli import app

runner = CliRunner()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_info_json_has_preset_and_exact_params() -> None:
    result = runner.invoke(app, ["info", "--preset", "debug", "--json"])
    assert result.exit_code == 0, result.output
    data = last_json(result.stdout)
    assert data["preset"] == "debug" and data["params"] == 857_984
    assert {"n_layers", "dim", "n_heads", "vocab_size"} <= set(data)


def test_user_errors_are_one_line_with_exit_code_2() -> None:
    result = runner.invoke(app, ["info", "--preset", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown preset 'nope'" in result.stderr and "debug" in result.stderr


def test_train_then_eval_on_udhr(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--corpus",
        str(tiny_corpus),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--warmup-steps",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = last_json(result.stdout)
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 4 * 32 and summary["tokens_per_s"] > 0
    assert set(summary["bpb"]) == {"de", "el", "et"}

    result = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(out),
            "--corpus",
            str(tiny_corpus),
            "--split",
            "udhr",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    ev = last_json(result.stdout)
    assert set(ev["bpb"]) == {"de", "el", "et"} and ev["seq_len"] == 32 and ev["step"] == 4

    result = runner.invoke(
        app, ["eval", "--checkpoint", str(out), "--corpus", str(tiny_corpus), "--split", "train"]
    )
    assert result.exit_code == 2 and "never on train" in result.stderr


def test_eval_refuses_a_tampered_checkpoint(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner.invoke(
        app,
        [
            "train",
            "--corpus",
            str(tiny_corpus),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--out",
            str(out),
        ],
    )
    ckpt = out / (out / "LATEST").read_text().strip()
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text().replace("128", "256"))
    result = runner.invoke(app, ["eval", "--checkpoint", str(out), "--corpus", str(tiny_corpus)])
    assert result.exit_code == 2 and "does not match its sha256" in result.stderr


def test_corpus_stats_json(tiny_corpus: Path) -> None:
    result = runner.invoke(app, ["corpus", "stats", str(tiny_corpus), "--json"])
    assert result.exit_code == 0, result.output
    langs = last_json(result.stdout)["languages"]
    assert set(langs) == {"de", "el", "et"}
    el = langs["el"]
    assert el["tokens"] == el["bytes"] and el["chars"] < el["bytes"] and el["paragraphs"] > 10


def test_tokenizer_train_writes_a_usable_file(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok.json"
    result = runner.invoke(
        app,
        [
            "tokenizer",
            "train",
            "--corpus",
            str(tiny_corpus),
            "--vocab-size",
            "400",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = last_json(result.stdout)
    assert data["vocab_size"] == 400 and all(v > 1.0 for v in data["chars_per_token"].values())
    stats = runner.invoke(
        app, ["corpus", "stats", str(tiny_corpus), "--tokenizer", str(out), "--json"]
    )
    assert last_json(stats.stdout)["languages"]["de"]["chars_per_token"] > 1.0


def test_missing_corpus_language_is_reported(tiny_corpus: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["train", "--corpus", str(tiny_corpus), "--languages", "fi", "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 2 and "fi.txt" in result.stderr


def test_the_installed_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "step-model"
    proc = subprocess.run(
        [str(exe), "info", "--preset", "tiny", "--json"], capture_output=True, text=True, check=True
    )
    assert last_json(proc.stdout)["params"] == 10_522_880


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_there(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import time

    from step_model.train import Trainer
    from step_model.train_config import TrainConfig

    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "step-model"
    flags = [
        "--corpus",
        str(tiny_corpus),
        "--steps",
        "100000",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--checkpoint-every",
        "100000",
    ]
    proc = subprocess.Popen(
        [str(exe), "train", *flags, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    cfg = TrainConfig(
        corpus=str(tiny_corpus), steps=100000, batch_size=2, seq_len=16, checkpoint_every=100000
    )
    resumed = Trainer(cfg, out, resume=True)
    assert 10 <= resumed.step < 100000  # metrics.jsonl exists only after the 10th step
