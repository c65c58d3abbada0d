"""The node's persistent torchrun workers (node/worker_group.py) and the ClientApp's handoff
(node/worker_inbox.py): rounds go in through the state folder and come back encoded; workers
killed mid-round are restarted by torchrun and the round is trained again to the same bytes;
the same node on two hosts (two torchrun agents meeting at a c10d rendezvous)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from node.client_app import _on_workers
from node.dp_trainer import DPSettings, make_records
from node.node_config import load_node_file
from node.supernode import worker_argv
from node.trainer import PrivateRound, RoundResult
from node.worker_inbox import Reply, WorkerFolder, WorkersDown
from step_common.errors import StepError
from step_fed.secret_rng import secret_generator
from step_launch.processes import descendants, free_port
from tests.node import sharded_worker as W

ROOT = Path(__file__).resolve().parents[2]


def _node(folder: Path, corpus: Path, **resources: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: node-a\ncoordinator: 127.0.0.1:9\ndata: {corpus}\nlanguages: [de]\n",
             "resources:\n  device: cpu\n  threads: 1\n",
             *(f"  {k}: {v}\n" for k, v in resources.items())]  # fmt: skip
    (folder / "node.yaml").write_text("".join(lines), encoding="utf-8")
    return folder / "node.yaml"


def _start(node_yaml: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = (node_yaml.parent / "workers.log").open("ab")
    return subprocess.Popen(worker_argv(load_node_file(node_yaml)), env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL torchrun's agent alone: its workers must end by themselves (an orphaned group
    would wait for rounds for ever). Returns those still running after 30 s (then killed)."""
    workers = descendants([proc.pid])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _running(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for_heartbeat(folder: WorkerFolder, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.heartbeat.is_file():
            return dict(json.loads(folder.heartbeat.read_text()))
        time.sleep(0.2)
    raise AssertionError("the workers never started")


def test_rounds_through_the_workers_killed_mid_round_and_on_two_hosts(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    node_yaml = _node(tmp_path / "node", tiny_corpus, gpus=2, precision="bf16")
    folder = WorkerFolder(tmp_path / "node" / "state")
    with pytest.raises(WorkersDown, match="step-node start"):  # none started within 1 s
        WorkerFolder(folder.root.parent, start_s=1.0).run_round(
            "node-a", W.round_config(1), W.received(1)
        )
    proc = _start(node_yaml)
    try:
        first = _wait_for_heartbeat(folder)
        settings = load_node_file(node_yaml).settings  # what the ClientApp hands over
        one = _on_workers(settings, W.round_config(1), W.received(1), None)
        assert one.tokens_per_language == {"de": 3 * 4 * 16} and "lm_head.weight" in one.update
        assert one.token_counts is not None and one.token_counts.dtype == torch.int32
        # round 2: all workers are killed while they train; torchrun starts the group again and
        # the request, still waiting in the inbox, is trained from round 1's state
        got: list[Reply] = []
        run = threading.Thread(
            target=lambda: got.append(folder.run_round("node-a", W.round_config(2), W.received(2)))
        )
        run.start()
        while json.loads(folder.heartbeat.read_text())["doing"] != "round 2":
            time.sleep(0.05)
        for pid in descendants([proc.pid]):  # every worker at once, torchrun's agent kept
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.join(timeout=240)
        assert got, (tmp_path / "node" / "workers.log").read_text()[-3000:]
        assert json.loads(folder.heartbeat.read_text())["pid"] != first["pid"]  # restarted
        again = folder.run_round("node-a", W.round_config(2), W.received(2))  # asked again
        assert all(torch.equal(again.update[k], got[0].update[k]) for k in again.update)
        # a round that fails for the same reason on every worker comes back as its error, and
        # a request the workers cannot read is answered, not retried for ever
        bad = W.round_config(3).model_copy(update={"drift_correction": 1})
        with pytest.raises(StepError, match="drift correction"):
            folder.run_round("node-a", bad, W.received(3))
        unreadable = W.round_config(3).model_copy(update={"drift_correction": True})
        with pytest.raises(StepError, match="could not read the round request"):
            folder.run_round("node-a", unreadable, W.received(3))
        # a DP-SGD round handed over with the settings the ClientApp's ledger charged and a
        # seed from its secret generator; these workers compute in bf16, which DP-SGD refuses
        # (a DP round on workers runs in tests/step_sim/test_cli.py and test_sharded.py)
        dp = PrivateRound(make_records({}, 16), DPSettings(1.0, 1.0, 4, "ghost"),
                          secret_generator(11))  # fmt: skip
        with pytest.raises(StepError, match="computes in fp32"):
            _on_workers(settings, W.round_config(3), W.received(3), dp)
    finally:
        left = _stop(proc)
    assert not left, "the workers outlived torchrun's agent"
    assert not list(folder.inbox.iterdir()) and not list(folder.outbox.iterdir())
    _two_hosts(tmp_path, tiny_corpus, one)


def _two_hosts(tmp_path: Path, corpus: Path, want: object) -> None:
    """The node's workers on two "hosts": two torchrun agents, one worker each, meeting at a
    c10d rendezvous on loopback: round 1 has the bits of the one-host group's round 1. A host
    that does not share the state folder is told so."""
    port = free_port()
    shared = _node(tmp_path / "hosts", corpus, gpus=1, precision="bf16", hosts=2,
                   rendezvous=f"127.0.0.1:{port}")  # fmt: skip
    agents = [_start(shared), _start(shared)]
    try:
        _wait_for_heartbeat(WorkerFolder(tmp_path / "hosts" / "state"))
        settings = load_node_file(shared).settings
        got = _on_workers(settings, W.round_config(1), W.received(1), None)
        assert isinstance(want, RoundResult) and got.update.keys() == want.update.keys()
        assert all(torch.equal(got.update[k], want.update[k]) for k in got.update)
    finally:
        for agent in agents:
            _stop(agent)
    port = free_port()
    apart = [_node(tmp_path / f"apart-{i}", corpus, gpus=1, hosts=2,
                   rendezvous=f"127.0.0.1:{port}") for i in (0, 1)]  # fmt: skip
    agents = [_start(apart[0]), _start(apart[1])]
    try:
        deadline, logs = time.monotonic() + 120, [y.parent / "workers.log" for y in apart]
        while not any("does not see" in log.read_text(errors="replace") for log in logs):
            assert time.monotonic() < deadline, logs[1].read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        text = "".join(log.read_text(errors="replace") for log in logs)
        assert "must be on a filesystem every host of the node shares" in text
    finally:
        for agent in agents:
            _stop(agent)


def test_a_node_with_workers_refuses_what_they_cannot_do(tmp_path: Path, tiny_corpus: Path) -> None:
    one = _node(tmp_path / "one", tiny_corpus, precision="bf16")
    with pytest.raises(StepError, match="apply to torchrun workers"):
        load_node_file(one)
    dp = _node(tmp_path / "dp", tiny_corpus, gpus=2)
    plain = dp.read_text()
    dp.write_text(plain + "privacy: {epsilon: 8, delta: 1.0e-6, rounds: 4}\n")
    assert load_node_file(dp).settings.privacy is not None  # ghost DP-SGD runs on workers
    dp.write_text(plain + "privacy: {epsilon: 8, delta: 1.0e-6, rounds: 4, mode: hooks}\n")
    with pytest.raises(StepError, match="mode hooks does not run on torchrun workers"):
        load_node_file(dp)
    bf16 = _node(tmp_path / "bf16", tiny_corpus, gpus=2, precision="bf16")
    bf16.write_text(bf16.read_text() + "privacy: {epsilon: 8, delta: 1.0e-6, rounds: 4}\n")
    with pytest.raises(StepError, match="computes in fp32"):
        load_node_file(bf16)
    again = _node(tmp_path / "again", tiny_corpus, gpus=2, activation_checkpointing="true")
    again.write_text(again.read_text() + "privacy: {epsilon: 8, delta: 1.0e-6, rounds: 4}\n")
    with pytest.raises(StepError, match="cannot recompute activations"):
        load_node_file(again)
    if torch.cuda.device_count() < 64:
        gpu = _node(tmp_path / "gpu", tiny_corpus, gpus=64)
        gpu.write_text(gpu.read_text().replace("device: cpu", "device: cuda"))
        with pytest.raises(StepError, match="CUDA"):
            load_node_file(gpu)


def test_a_stale_heartbeat_is_waited_for_then_reported_and_orphans_are_cleared(
    tmp_path: Path,
) -> None:
    folder = WorkerFolder(tmp_path / "state", start_s=0.5)
    folder.root.mkdir(parents=True)
    folder.beat("waiting")
    old = time.time() - 600
    os.utime(folder.heartbeat, (old, old))  # a group that ran before and is gone
    with pytest.raises(WorkersDown, match="stopped answering 6"):
        folder.run_round("node-a", W.round_config(1), W.received(1))
    assert not folder.inbox.exists()  # refused before any request was written
    # a reply nobody took for a day (its ClientApp died) goes, with its request
    for box in (folder.inbox, folder.outbox):
        (box / "gone").mkdir(parents=True)
    (folder.inbox / "gone" / "round.json").write_text("{}")
    ancient = time.time() - 2 * 24 * 3600
    os.utime(folder.outbox / "gone", (ancient, ancient))
    assert folder.next_request() is None
    assert not (folder.inbox / "gone").exists() and not (folder.outbox / "gone").exists()


def test_a_restarted_group_meets_although_a_worker_rejoins_late(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    """torchrun's agent keeps one store for every generation of workers by default, so worker 0
    of a restarted group can read the killed worker 1's address and fail on "Connection
    refused" (what CI once hit in the test above); the node's agent gives each its own."""
    argv = worker_argv(load_node_file(_node(tmp_path, tiny_corpus, gpus=2)))
    agent = argv[: argv.index("node.worker_group") - 1]  # the command up to the workers' module
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([*agent, str(Path(__file__).with_name("slow_rejoin_worker.py"))],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and "generation 1 met" in run.stdout, run.stderr[-3000:]
