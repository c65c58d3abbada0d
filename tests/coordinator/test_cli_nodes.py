"""`step-coord nodes` and `status` show a node registered behind the admin's back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import coordinator.cli as coord_cli
from coordinator.registry import Registry
from node.keys import create_key_pair


def test_unenrolled_registrations_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(coord_cli.app, ["init", str(fed)]).exit_code == 0
    registry = Registry(fed)
    pub = create_key_pair(tmp_path / "athens", "athens")
    registry.enroll("athens", pub).node_id = 11
    registry.save()
    listed: list[dict[str, Any]] = [
        {"node-id": "11", "status": "online"},
        {"node-id": "99", "status": "online"},  # registered through the Control API
        {"node-id": "98", "status": "unregistered"},  # already removed by the guard
    ]
    monkeypatch.setattr(coord_cli, "_listed_nodes", lambda fed: listed)

    nodes = runner.invoke(coord_cli.app, ["nodes", "--json", "--dir", str(fed)])
    assert nodes.exit_code == 0, nodes.output
    report = json.loads(nodes.stdout.strip().splitlines()[-1])
    assert report["unenrolled"] == [{"node_id": 99, "status": "online"}]
    assert [n["connected"] for n in report["nodes"]] == [True]

    human = runner.invoke(coord_cli.app, ["nodes", "--dir", str(fed)])
    assert "NOT ENROLLED" in human.stdout and "ALERT: node id 99" in human.stdout

    status = runner.invoke(coord_cli.app, ["status", "--dir", str(fed)])
    assert "ALERT: node id 99 is registered but not enrolled" in status.stdout
    assert "1 connected ['athens']" in status.stdout


def test_init_and_enroll_answer_in_json(tmp_path: Path) -> None:
    runner = CliRunner()
    fed = tmp_path / "fed"
    made = runner.invoke(coord_cli.app, ["init", str(fed), "--json"])
    assert made.exit_code == 0, made.output
    report = json.loads(made.stdout.strip().splitlines()[-1])
    assert report["signing_key_fingerprint"].startswith("SHA256:")
    assert Path(report["federation_key"]).is_file() and Path(report["ca_cert"]).is_file()
    pub = tmp_path / "athens" / "node.pub"
    create_key_pair(pub.parent, "athens")
    done = runner.invoke(
        coord_cli.app, ["enroll", "athens", "--public-key", str(pub), "--dir", str(fed), "--json"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["applied"] is False
    assert len(done.stdout.strip().splitlines()) == 1  # human lines went to stderr
