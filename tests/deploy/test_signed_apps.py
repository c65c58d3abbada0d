"""Nodes run only apps signed with their federation's key.

A SuperLink without step-coord's guard (so that foreign runs are not stopped before they reach
the node) and a real step-node. An outsider submits an app through the Control API, with the
flwr CLI and nothing but ca.crt: unsigned, then signed with another federation's key. The node
refuses both before any of their code runs (the marker files they would write never appear),
and says so in its log and in `step-node status`. The same app signed with the federation's key
runs: the control that shows this test can fail.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.app_signing import SignedApp
from coordinator.deployment import FederationFolder, coordinator_settings
from coordinator.registry import Registry
from coordinator.superlink import FlowerAdmin, flower_env, start_superlink, sync_registry
from step_common.signatures import create_signing_key, load_signing_key
from step_launch.processes import ChildProcesses, new_marker
from tests.deploy.harness import Outsider, Processes, cli, free_ports, last_json, quick

pytestmark = pytest.mark.slow


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _refused_runs(node: Path) -> dict[int, str]:
    report = last_json(cli("step-node", "status", "--dir", node, "--json").stdout)
    return {int(r["run_id"]): r["reason"] for r in report["refused_apps"]}


def test_nodes_refuse_apps_not_signed_by_the_federation(tmp_path: Path, tiny_corpus: Path) -> None:
    fleet, control = free_ports(2)
    fed, node = tmp_path / "fed", tmp_path / "uni"
    assert quick("step-coord", "init", fed, "--fleet-address", f"127.0.0.1:{fleet}",
               "--control-port", str(control)).returncode == 0  # fmt: skip
    assert quick("step-node", "init", node, "--coordinator", f"127.0.0.1:{fleet}", "--ca",
               fed / "tls" / "ca.crt", "--federation-key", fed / "tls" / "federation.pub",
               "--data", tiny_corpus).returncode == 0  # fmt: skip
    assert quick("step-coord", "enroll", "uni", "--public-key", node / "node.pub", "--dir",
               fed).returncode == 0  # fmt: skip
    create_signing_key(tmp_path / "other-federation", "other")
    folder = FederationFolder(fed)
    settings = coordinator_settings(folder.config)
    mallory = Outsider(tmp_path, control, folder.tls / "ca.crt")
    app = mallory.app
    marker = new_marker()
    with ChildProcesses(marker) as procs, Processes(tmp_path) as nodes:
        folder.logs.mkdir(parents=True, exist_ok=True)
        start_superlink(procs, folder, settings, flower_env(folder, marker),
                        folder.logs / "superlink.log")  # fmt: skip
        sync_registry(FlowerAdmin(folder, settings), Registry(fed))
        nodes.start("uni", "step-node", "start", "--dir", node)
        _wait(lambda: "connected to the coordinator" in nodes.log("uni"), 90, "the node")

        unsigned = mallory.submit(tmp_path / "unsigned.marker", delay=0.0)
        _wait(lambda: unsigned in _refused_runs(node), 90, "the unsigned app's refusal")

        foreign = mallory.submit(tmp_path / "foreign.marker", delay=3.0)
        other_key = load_signing_key(tmp_path / "other-federation" / "federation.key")
        SignedApp(app, other_key).store_signature(folder.database)
        _wait(lambda: foreign in _refused_runs(node), 90, "the foreign-signed app's refusal")

        signed = mallory.submit(tmp_path / "signed.marker", delay=3.0)
        SignedApp(app, load_signing_key(folder.signing_key)).store_signature(folder.database)
        _wait(lambda: (tmp_path / "signed.marker").exists(), 90, "the signed app to run")

        assert not (tmp_path / "unsigned.marker").exists()
        assert not (tmp_path / "foreign.marker").exists()
        refused = _refused_runs(node)
        assert "not supported by the connected SuperLink" in refused[unsigned]  # no signature
        assert "could not verify the FAB" in refused[foreign]  # a signature, not ours
        assert signed not in refused
        log = nodes.log("uni")
        assert f"REFUSED the app of run {unsigned}" in log
        assert f"REFUSED the app of run {foreign}" in log
