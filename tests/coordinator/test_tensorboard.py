"""The round loop's TensorBoard files, read back with TensorBoard's own reader: the tags and
values of metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.config import load_federation_config
from coordinator.rounds import RoundRunner
from coordinator.tensorboard_log import FOLDER, scalars
from tests.local_federation import LocalTransport, write_sim_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_every_round_and_evaluation_is_in_tensorboard(tiny_corpus: Path, tmp_path: Path) -> None:
    institutions = [{"name": "hellas", "languages": {"el": 1.0}},
                    {"name": "baltic", "languages": {"et": 1.0}}]  # fmt: skip
    cfg_file = write_sim_config(tmp_path / "sim.yaml", tiny_corpus, institutions, rounds=2)
    run = tmp_path / "run"
    RoundRunner(load_federation_config(cfg_file), run, LocalTransport(cfg_file, run, 2)).run()
    board = event_accumulator.EventAccumulator(str(run / FOLDER))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"bpb/mean", "bpb/el", "bpb/et", "train/loss", "train/tokens_per_s", "bytes/up",
            "bytes/down", "nodes/in_round", "nodes/rejected", "nodes/missing",
            "nodes/dropped"} <= tags  # fmt: skip
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for rec in records:
        for tag, value in scalars(rec).items():
            events = [e for e in board.Scalars(tag) if e.step == rec["round"]]
            assert events and events[-1].value == pytest.approx(value, rel=1e-6), tag
    assert [e.step for e in board.Scalars("bytes/up")] == [1, 2]
