"""End to end over gRPC + TLS on loopback: step-coord init/enroll/start, three honest nodes,
and three that must be refused: not enrolled, revoked, and one that trusts another CA; and an
outsider on the coordinator's host with the flwr CLI and ca.crt, whose registration, app and stop
are undone or recorded."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
from flwr.proto.fleet_pb2_grpc import FleetStub
from flwr.proto.run_pb2 import GetRunRequest

from step_model.checkpoint import SUMS
from tests.deploy.harness import Outsider, Processes, cli, free_ports, last_json, quick

pytestmark = pytest.mark.slow

HONEST = ("alpha", "beta", "gamma")
LANGS = {"alpha": "et", "beta": "el", "gamma": "de"}


def _ok(result: object) -> None:
    assert getattr(result, "returncode", 1) == 0, getattr(result, "stderr", "")


def _setup(tmp: Path, corpus: Path) -> tuple[Path, int, int]:
    fleet, control = free_ports(2)
    fed = tmp / "fed"
    _ok(quick("step-coord", "init", fed, "--host", "127.0.0.1", "--rounds", "2",
            "--inner-steps", "3", "--min-nodes", "3", "--fleet-address",
            f"127.0.0.1:{fleet}", "--control-port", str(control)))  # fmt: skip
    cfg = fed / "coordinator.yaml"
    cfg.write_text(cfg.read_text().replace("eval_every: 5 ", "eval_every: 2 "))
    other = tmp / "twin" / "fed"  # another federation of the same name: its CA vouches for nothing
    _ok(quick("step-coord", "init", other, "--fleet-address", "127.0.0.1:1", "--control-port", "2"))
    nodes = {**{n: fed for n in HONEST}, "intruder": fed, "revoked": fed, "wrongca": other,
             "mallory": fed}  # fmt: skip
    for name, ca_fed in nodes.items():
        node = tmp / name
        _ok(quick("step-node", "init", node, "--coordinator", f"127.0.0.1:{fleet}",
                "--ca", ca_fed / "tls" / "ca.crt", "--federation-key",
                fed / "tls" / "federation.pub", "--data", corpus))  # fmt: skip
        yaml_path = node / "node.yaml"
        lang = LANGS.get(name, "et")
        yaml_path.write_text(
            yaml_path.read_text().replace("languages: null ", f"languages: [{lang}] ")
        )
        if name == "gamma":  # claims another institution's name: the enrolled one counts;
            text = yaml_path.read_text().replace("name: gamma", "name: alpha")  # and has DP
            yaml_path.write_text(text.replace("privacy: null ", "privacy: {epsilon: 8, delta: "
                                              "1.0e-6, rounds: 4} "))  # fmt: skip
        if name not in ("intruder", "mallory"):
            _ok(
                quick("step-coord", "enroll", name, "--public-key", node / "node.pub", "--dir", fed)
            )
    _ok(quick("step-coord", "revoke", "revoked", "--dir", fed))
    return fed, fleet, control


def test_federation_over_tls_with_refusals(tmp_path: Path, tiny_corpus: Path) -> None:
    fed, fleet, control = _setup(tmp_path, tiny_corpus)
    with Processes(tmp_path) as procs:
        procs.start("coord", "step-coord", "start", "--dir", fed)
        _wait_for_line(procs, "coord", "started", timeout=90)  # keys registered, run submitted
        _assert_grpc_over_tls(fed, fleet)
        # The outsider registers a key of its own behind the admin's back and submits an app.
        mallory = Outsider(tmp_path, control, fed / "tls" / "ca.crt")
        mallory.flwr("supernode", "register", tmp_path / "mallory" / "node.pub")
        mallory.submit(tmp_path / "evil.marker")
        # "revoked" is not started: its key is unregistered like mallory's once the guard acts,
        # and a refusal retried for 75 s costs this 2-core machine a SuperNode start per backoff.
        for name in (*HONEST, "intruder", "wrongca", "mallory"):
            procs.start(name, "step-node", "start", "--dir", tmp_path / name)
        # beta is killed (kill -9) once it has taken round 1's message, and started again:
        # min_nodes is every node, so the round waits for it and sends it the message again.
        # (Its old session holds its key for up to a minute: the refusals' grace overlaps.)
        _wait_for_file_line(tmp_path / "beta" / "logs" / "supernode.log", "Received successfully")
        procs.procs["beta"].send_signal(signal.SIGKILL)
        procs.start("beta-again", "step-node", "start", "--dir", tmp_path / "beta")

        assert procs.wait("intruder", timeout=180) == 3, procs.log("intruder")
        assert "refused this node's key" in procs.log("intruder")
        assert "not enrolled, or it was revoked" in procs.log("intruder")
        assert procs.wait("mallory", timeout=180) == 3, procs.log("mallory")  # unregistered
        assert procs.wait("wrongca", timeout=90) == 3, procs.log("wrongca")
        assert "does not vouch for" in procs.log("wrongca")
        assert "Traceback" not in procs.log("wrongca") + procs.log("intruder")

        assert procs.wait("coord", timeout=240) == 0, procs.log("coord")
    _assert_outsider_undone(tmp_path, fed, procs.log("coord"))
    assert "round 1: 3 nodes" in procs.log("coord")  # beta's update counted in round 1
    assert "sent again to ['beta'] (restarted mid-round)" in procs.log("coord")
    served = (fed / "logs" / "superlink.log").read_text()
    assert "beta is connected again: sent it the same message again" in served
    assert "round 1/2: trained 3 steps" in procs.log("beta-again"), procs.log("beta-again")

    status = cli("step-coord", "status", "--dir", fed, "--json")
    _ok(status)
    report = last_json(status.stdout)
    assert report["status"] == "completed"
    assert report["round"] == 2 and report["rounds"] == 2
    assert report["nodes"]["enrolled"] == sorted([*HONEST, "wrongca"])
    assert report["nodes"]["revoked"] == ["revoked"]
    assert set(report["bpb"]) == set(LANGS.values())
    assert 0 < report["mean_bpb"] < 8.5
    assert report["bytes_up"] > 0 and report["bytes_down"] > 0
    assert "round 2: 3 nodes" in procs.log("coord")
    records = [json.loads(x) for x in (fed / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(records[0]["node_wall_s"]) == set(HONEST)
    assert all(set(r.get("node_wall_s", {})) <= set(HONEST) for r in records)  # no mallory
    signed = [r["epsilon_reports"]["gamma"] for r in records if r["kind"] == "round"]
    assert [json.loads(x["report"])["round"] for x in signed] == [1, 2]  # signed by gamma's key
    assert len(report["alerts"]) == 2, report["alerts"]
    _assert_node_status(tmp_path / "gamma", report["epsilon"]["gamma"])


def _assert_node_status(node: Path, epsilon: float) -> None:
    """The operator's account of the run: both rounds, bytes both ways, the time per round
    and the epsilon the coordinator was told."""
    status = cli("step-node", "status", "--dir", node, "--json")
    _ok(status)
    training = last_json(status.stdout)["training"]
    assert training["run_rounds"] == 2 and training["last_round"] == 2
    assert training["bytes_received"] > 0 and training["bytes_sent"] > 0
    assert training["mean_round_s"] > 0 and training["tokens"] > 0
    assert training["epsilon"] == pytest.approx(epsilon)
    assert "trained 2 rounds (last: round 2 of 2)" in status.stderr  # --json: humans on stderr


def _assert_outsider_undone(tmp: Path, fed: Path, coord_log: str) -> None:
    """The foreign registration was removed and the foreign app stopped, both recorded in a
    log that verifies; no code of the app ran; the run's files are private and its last
    checkpoint carries the federation's signature."""
    assert "was registered through the Control API, not by step-coord enroll" in coord_log
    assert "(mallory/evilapp) was submitted through the Control API" in coord_log
    assert not (tmp / "evil.marker").exists()
    audit = cli("step-coord", "audit", "--verify", "--json", "--dir", fed)
    _ok(audit)
    entries = last_json(audit.stdout)["entries"]
    actions = [e["action"] for e in entries]
    assert actions[:1] == ["init"] and actions.count("alert") == 2
    rounds = [e["details"] for e in entries if e["action"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert set(rounds[-1]["participants"]) == set(HONEST) and rounds[-1]["sha256sums"]
    latest = fed / "run" / (fed / "run" / "LATEST").read_text().strip()
    assert (latest / f"{SUMS}.sig").is_file()
    _ok(cli("step-model", "verify", latest, "--federation-key", fed / "tls" / "federation.pub"))
    for private in (fed / "state" / "superlink.db", fed / "state", fed / "logs", fed / "run"):
        assert private.stat().st_mode & 0o077 == 0, f"{private} is readable by others"


def _wait_for_line(procs: Processes, name: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in procs.log(name):
            return
        assert procs.procs[name].poll() is None, procs.log(name)
        time.sleep(0.5)
    raise AssertionError(f"{name} did not print {text!r}:\n" + procs.log(name))


def _wait_for_file_line(path: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} never showed {text!r}")


def _assert_grpc_over_tls(fed: Path, port: int) -> None:
    """The node port speaks TLS (certificate from the federation CA, HTTP/2 negotiated) and
    plain gRPC without TLS gets nothing; over TLS, Flower's Fleet service answers and refuses
    a request that carries no node signature."""
    ca = fed / "tls" / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.selected_alpn_protocol() == "h2"  # HTTP/2: the gRPC transport

    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        with pytest.raises(grpc.RpcError) as err:
            FleetStub(channel).GetRun(GetRunRequest(run_id=1), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            FleetStub(channel).GetRun(GetRunRequest(run_id=1), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_status_while_running_and_a_clean_stop(tmp_path: Path) -> None:
    """A stop through the Control API that step-coord did not issue is recorded and the run
    resumes; step-coord stop then stops it cleanly."""
    fleet, control = free_ports(2)
    fed = tmp_path / "fed"
    _ok(quick("step-coord", "init", fed, "--fleet-address", f"127.0.0.1:{fleet}",
            "--control-port", str(control)))  # fmt: skip
    with Processes(tmp_path) as procs:
        procs.start("first", "step-coord", "start", "--dir", fed)
        _wait_for_line(procs, "first", "started", timeout=90)
        run_id = last_json(cli("step-coord", "status", "--dir", fed, "--json").stdout)["run_id"]
        Outsider(tmp_path, control, fed / "tls" / "ca.crt").flwr("stop", str(run_id))
        assert procs.wait("first", timeout=60) == 1, procs.log("first")
        assert "stopped through Flower's Control API by someone other" in procs.log("first")
        report = last_json(cli("step-coord", "status", "--dir", fed, "--json").stdout)
        assert report["status"] == "interrupted"
        assert any(f"run {run_id} was stopped through the Control API" in a
                   for a in report["alerts"])  # fmt: skip

        procs.start("coord", "step-coord", "start", "--dir", fed, "--resume")
        _wait_for_line(procs, "coord", "started", timeout=90)
        running = last_json(cli("step-coord", "status", "--dir", fed, "--json").stdout)
        assert running["status"] == "running" and running["round"] == 0
        assert running["nodes"]["connected"] == [] and running["pid"] is not None
        again = cli("step-coord", "start", "--dir", fed)
        assert again.returncode == 2 and "already running" in again.stderr
        _ok(cli("step-coord", "stop", "--dir", fed))
        assert procs.wait("coord", timeout=30) == 0
    stopped = last_json(cli("step-coord", "status", "--dir", fed, "--json").stdout)
    assert stopped["status"] == "stopped" and stopped["pid"] is None
    actions = [e["action"] for e in last_json(cli("step-coord", "audit", "--verify", "--json",
                                                  "--dir", fed).stdout)["entries"]]  # fmt: skip
    assert actions == ["init", "start", "alert", "end", "resume", "stop", "end"]
    leftovers = [
        p for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(fed).encode() in _cmdline(p)
    ]  # fmt: skip
    assert leftovers == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_failed_run_is_reported_as_failed(tmp_path: Path) -> None:
    """flwr run exits 0 even when the ServerApp then fails; step-coord checks the status."""
    fleet, control = free_ports(2)
    fed = tmp_path / "fed"
    _ok(quick("step-coord", "init", fed, "--fleet-address", f"127.0.0.1:{fleet}",
            "--control-port", str(control)))  # fmt: skip
    cfg = fed / "coordinator.yaml"
    text = cfg.read_text().replace("round_timeout_s: 600", "round_timeout_s: 3")
    cfg.write_text(text)  # no node comes: the ServerApp gives up after 3 s
    with Processes(tmp_path) as procs:
        procs.start("coord", "step-coord", "start", "--dir", fed, "--json")
        assert procs.wait("coord", timeout=120) == 1, procs.log("coord")
    assert "failed" in procs.log("coord") and "only 0 nodes connected" in procs.log("coord")
    assert last_json(procs.log("coord"))["status"] == "failed"
    assert "Traceback" not in procs.log("coord")
    report = last_json(cli("step-coord", "status", "--dir", fed, "--json").stdout)
    assert report["status"] == "failed"


def test_a_node_started_before_the_coordinator_connects_when_it_comes(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    fleet, control = free_ports(2)
    fed = tmp_path / "fed"
    _ok(quick("step-coord", "init", fed, "--rounds", "1", "--inner-steps", "2", "--min-nodes", "1",
            "--fleet-address", f"127.0.0.1:{fleet}", "--control-port", str(control)))  # fmt: skip
    node = tmp_path / "early"
    _ok(quick("step-node", "init", node, "--coordinator", f"127.0.0.1:{fleet}",
            "--ca", fed / "tls" / "ca.crt", "--federation-key", fed / "tls" / "federation.pub",
            "--data", tiny_corpus))  # fmt: skip
    _ok(quick("step-coord", "enroll", "early", "--public-key", node / "node.pub", "--dir", fed))
    with Processes(tmp_path) as procs:
        procs.start("early", "step-node", "start", "--dir", node)
        _wait_for_line(procs, "early", "retrying", timeout=60)  # nobody listens yet
        procs.start("coord", "step-coord", "start", "--dir", fed)
        assert procs.wait("coord", timeout=180) == 0, procs.log("coord")
        assert "connected to the coordinator" in procs.log("early")
