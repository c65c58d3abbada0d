"""Secure aggregation deployed: step-coord and three step-nodes over gRPC + TLS on loopback, one
node killed (kill -9) while it trains; the round goes on with the sum of the two others, and
the coordinator's records hold no node's update, loss or token count."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from step_fed.secagg.roster import ROSTER
from tests.deploy.harness import Processes, cli, free_ports, last_json, quick

pytestmark = pytest.mark.slow

LANGS = {"alpha": "et", "beta": "el", "gamma": "de"}


def _ok(result: object) -> None:
    assert getattr(result, "returncode", 1) == 0, getattr(result, "stderr", "")


def _setup(tmp: Path, corpus: Path) -> Path:
    fleet, control = free_ports(2)
    fed = tmp / "fed"
    _ok(quick("step-coord", "init", fed, "--host", "127.0.0.1", "--rounds", "1",
              "--inner-steps", "3", "--min-nodes", "2", "--fleet-address",
              f"127.0.0.1:{fleet}", "--control-port", str(control)))  # fmt: skip
    cfg = fed / "coordinator.yaml"
    text = cfg.read_text().replace("update_encoding: int8 ", "update_encoding: fp32 ")
    text = text.replace("secure_aggregation: false", "secure_aggregation: true")
    cfg.write_text(text.replace("round_timeout_s: 600", "round_timeout_s: 20"))
    for name, lang in LANGS.items():
        node = tmp / name
        _ok(quick("step-node", "init", node, "--coordinator", f"127.0.0.1:{fleet}",
                  "--ca", fed / "tls" / "ca.crt", "--federation-key",
                  fed / "tls" / "federation.pub", "--data", corpus))  # fmt: skip
        yaml_path = node / "node.yaml"
        yaml_path.write_text(
            yaml_path.read_text().replace("languages: null ", f"languages: [{lang}] ")
        )
        _ok(quick("step-coord", "enroll", name, "--public-key", node / "node.pub", "--dir", fed))
    return fed


def test_secure_aggregation_over_tls_with_a_node_killed_mid_round(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    fed = _setup(tmp_path, tiny_corpus)
    roster = json.loads((fed / ROSTER).read_text())
    assert roster["version"] == 3 and sorted(roster["nodes"]) == sorted(LANGS)
    with Processes(tmp_path) as procs:
        procs.start("coord", "step-coord", "start", "--dir", fed)
        for name in LANGS:
            procs.start(name, "step-node", "start", "--dir", tmp_path / name)
        # gamma takes the round's train message (its third: keys, shares, train) and dies
        _wait_for_count(tmp_path / "gamma" / "logs" / "supernode.log", "Received successfully", 3)
        procs.procs["gamma"].send_signal(signal.SIGKILL)
        assert procs.wait("coord", timeout=300) == 0, procs.log("coord")
    records = [json.loads(x) for x in (fed / "run" / "metrics.jsonl").read_text().splitlines()]
    round_ = next(r for r in records if r["kind"] == "round")
    assert round_["secure"]["survivors"] == 2, round_
    assert round_["secure"]["dropped"] == ["gamma"]  # shared keys, then no input
    assert round_["nodes"] == 2 and round_["loss"] is None and "update_norm" not in round_
    assert round_["tokens"] == 2 * 3 * 8 * 128  # the survivors' tokens, from the secure sum
    assert "round 1/1: trained 3 steps" in procs.log("alpha")
    report = last_json(cli("step-coord", "status", "--dir", fed, "--json").stdout)
    assert report["status"] == "completed" and 0 < report["mean_bpb"] < 8.5


def _wait_for_count(path: Path, text: str, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} never showed {text!r} {count} times")
