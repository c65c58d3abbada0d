"""Fault injection: the coordinator and its nodes are SIGKILLed at random moments (seeded),
then resumed, until the run completes. After every kill: every checkpoint on disk loads and
verifies, committed rounds only go forward, node state verifies; at the end the run has every
round exactly once. ``STEP_FAULT_TRIALS`` sets the number of trials (CI: 2, one per broadcast
encoding; 20 for the record in bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from step_model.checkpoint import LATEST, load_checkpoint, verify_checkpoint
from tests.local_federation import write_sim_config

ROUNDS = 5
INSTITUTIONS = [
    {"name": "hellas", "languages": {"el": 1.0}},
    {"name": "baltic", "languages": {"et": 1.0, "de": 0.5}},
]
TRIALS = int(os.environ.get("STEP_FAULT_TRIALS", "2"))
KILLS = 4
"""Kills per trial; the next start runs to the end (keeps a trial within bounded time)."""
ROOT = Path(__file__).resolve().parents[2]


def committed_round(run: Path) -> int:
    if not (run / LATEST).exists():
        return 0
    return int(load_checkpoint(run, with_optimizer=False).state["round"])


def check_invariants(run: Path, last_round: int) -> int:
    ckpts = run / "checkpoints"
    for d in sorted(ckpts.iterdir()) if ckpts.is_dir() else []:
        if not d.name.startswith("."):  # ".NAME.*.tmp": an interrupted write, never committed
            load_checkpoint(d)  # verifies every file against SHA256SUMS
    for node in sorted((run / "nodes").glob("*/rounds/round-*")):
        verify_checkpoint(node, required=("state.json",))
    now = committed_round(run)
    assert now >= last_round, f"committed round went back from {last_round} to {now}"
    return now


def start(cfg: Path, run: Path, ready_s: list[float]) -> subprocess.Popen[str]:
    """Start the worker (resuming if a round was committed); waits until it is set up and
    appends its start-to-ready seconds to ``ready_s`` when it resumed."""
    args = [sys.executable, "-m", "tests.fault_worker", str(cfg), str(run)]
    resume = (run / LATEST).exists()
    if resume:
        args.append("--resume")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the run is set up (or the process died)
    if not line.startswith("ready "):
        proc.wait(timeout=30)
        raise AssertionError(f"worker failed to start: {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
    if resume:
        ready_s.append(float(line.split()[1]))
    return proc


@pytest.mark.parametrize("seed", range(TRIALS))
def test_random_kills_lose_no_committed_round(tiny_corpus: Path, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    # odd trials send the int8-delta broadcast: kills also hit nodes keeping their copy
    cfg = write_sim_config(tmp_path / "f.yaml", tiny_corpus, INSTITUTIONS, rounds=ROUNDS,
                           inner_steps=3, eval_every=2, keep_checkpoints=2,
                           broadcast_encoding="int8-delta" if seed % 2 else "fp32")  # fmt: skip
    run = tmp_path / "run"
    last_round, kills, t0 = 0, 0, time.monotonic()
    ready_s: list[float] = []
    while True:
        proc = start(cfg, run, ready_s)
        try:
            proc.wait(timeout=rng.uniform(0.0, 2.5) if kills < KILLS else 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]  # type: ignore[union-attr]
            break
        last_round = check_invariants(run, last_round)
        assert time.monotonic() - t0 < 300, "the run did not complete within 5 minutes"
    assert check_invariants(run, last_round) == ROUNDS
    assert not list((run / "checkpoints").glob(".*.tmp")), "interrupted writes were left behind"
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == [f"round-{ROUNDS - 1:06d}", f"round-{ROUNDS:06d}"]  # keep_checkpoints: 2
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["kind"] == "round"] == list(range(1, ROUNDS + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["mean_bpb"] is not None
    resumes = f"{len(ready_s)} resumes, start to ready {max(ready_s, default=0):.2f} s at most"
    print(f"seed {seed}: {kills} kills, rounds lost 0, {resumes}")
