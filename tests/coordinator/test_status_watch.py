"""`step-coord status --watch`: a view refreshed until Ctrl-C with the round, the ETA from the
mean round time, connected nodes, the last bpb per language and the privacy spent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import coordinator.cli as coord_cli
from coordinator.deployment import FederationFolder, ProcessState
from coordinator.registry import Registry
from node.keys import create_key_pair


def _running_federation(tmp_path: Path) -> Path:
    """A federation at round 2 of 10 (rounds of 30 s and 50 s), run by this very process."""
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(coord_cli.app, ["init", str(fed), "--rounds", "10"]).exit_code == 0
    registry = Registry(fed)
    for i, name in enumerate(["athens", "lisbon"]):
        registry.enroll(name, create_key_pair(tmp_path / name, name)).node_id = 11 + i
    registry.save()
    folder = FederationFolder(fed)
    ProcessState(os.getpid(), "running", time.time(), "x:1", 2, run_id=7).save(folder)
    folder.run.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = [
        {"kind": "round", "round": 1, "nodes": 2, "loss": 3.5, "wall_s": 30.0, "bytes_up": 10,
         "bytes_down": 20, "epsilon": {"athens": 0.41}},
        {"kind": "round", "round": 2, "nodes": 2, "loss": 3.1, "wall_s": 50.0, "bytes_up": 10,
         "bytes_down": 20, "epsilon": {"athens": 0.62}, "epsilon_central": 1.25},
        {"kind": "eval", "round": 2, "nodes": 2, "bpb": {"ell": 2.25, "por": 2.5},
         "mean_bpb": 2.375, "final": False},
    ]  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in records)
    (folder.run / "metrics.jsonl").write_text(text, encoding="utf-8")
    return fed


def test_watch_refreshes_until_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = _running_federation(tmp_path)
    monkeypatch.setattr(coord_cli, "_listed_nodes",
                        lambda fed: [{"node-id": "11", "status": "online"}])  # fmt: skip
    naps: list[float] = []

    def sleep(seconds: float) -> None:  # the admin presses Ctrl-C during the third wait
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(coord_cli.time, "sleep", sleep)
    result = CliRunner().invoke(
        coord_cli.app, ["status", "--watch", "--interval", "2", "--dir", str(fed)]
    )
    assert result.exit_code == 0, result.output
    assert naps == [2.0, 2.0, 2.0]
    out = result.stdout
    assert out.count("run 7: running") == 3  # three views: not a terminal, so one after another
    assert "round 2/10   mean round 40 s   ETA 5m 20s" in out  # 40 s x 8 rounds left
    assert "1 of 2 enrolled connected (athens)" in out
    assert "ell" in out and "2.2500" in out and "por" in out and "2.3750" in out
    assert "athens (local DP)" in out and "0.620" in out  # the latest spend, not round 1's
    assert "1.250" in out  # central DP


def test_status_shows_the_eta_and_watch_refuses_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = _running_federation(tmp_path)
    monkeypatch.setattr(coord_cli, "_listed_nodes", lambda fed: [])
    plain = CliRunner().invoke(coord_cli.app, ["status", "--dir", str(fed)])
    assert "round 2 of 10, ETA 5m 20s" in plain.stdout
    report = json.loads(
        CliRunner().invoke(coord_cli.app, ["status", "--json", "--dir", str(fed)]).stdout
    )
    assert report["mean_round_s"] == 40.0 and report["eta_s"] == 320.0
    both = CliRunner().invoke(coord_cli.app, ["status", "--watch", "--json", "--dir", str(fed)])
    assert both.exit_code == 2 and "pick one" in both.output
