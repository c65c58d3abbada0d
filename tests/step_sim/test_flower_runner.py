"""The simulation launcher: a real SuperLink + Ray run of a tiny throwaway Flower App.

Every test that starts processes checks afterwards that none is left (found by the FLWR_HOME
inside its run folder, which every child inherits) and kills leftovers before failing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from step_common.errors import StepError
from step_launch import superlink as launcher
from step_launch.processes import ChildProcesses, free_port
from step_sim import flower_runner
from step_sim.flower_runner import SimulationSpec, run_simulation_app

SERVER_APP = '''
"""Tiny ServerApp (Message API): N rounds of one train message per node, result to a file."""

import json
import time
import uuid

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if cfg["fail"]:
        raise RuntimeError("tiny serverapp failed on purpose")
    # Simulated nodes register asynchronously: wait for them, as Flower's strategies do.
    deadline = time.time() + 120
    nodes = list(grid.get_node_ids())
    while len(nodes) < int(cfg["min-nodes"]) and time.time() < deadline:
        time.sleep(0.1)
        nodes = list(grid.get_node_ids())
    rounds = []
    for r in range(int(cfg["num-rounds"])):
        msgs = [
            Message(
                RecordDict({"config": ConfigRecord({"round": r})}),
                dst_node_id=node,
                message_type=MessageType.TRAIN,
            )
            for node in nodes
        ]
        replies = grid.send_and_receive(msgs, timeout=120)
        rounds.append(
            [dict(m.content["metrics"]) if m.has_content() else {"error": str(m.error)}
             for m in replies]
        )
    with open(str(cfg["result-path"]), "w", encoding="utf-8") as f:
        json.dump({"rounds": rounds}, f)
'''

CLIENT_APP = '''
"""Tiny ClientApp: echoes its partition id; can announce itself and stall (interrupt test)."""

import os
import time
import uuid
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    if cfg["started-dir"]:
        Path(str(cfg["started-dir"]), f"client-{os.getpid()}").touch()
    time.sleep(float(cfg["stall-s"]))
    metrics = MetricRecord(
        {
            "partition-id": int(context.node_config["partition-id"]),
            "round": int(msg.content["config"]["round"]),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
'''

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyapp"
version = "0.1.0"
description = "Throwaway Flower App for the launcher tests"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "steptest"

[tool.flwr.app.components]
serverapp = "mypkg.server:app"
clientapp = "mypkg.client:app"

[tool.flwr.app.config]
num-rounds = 2
min-nodes = 2
result-path = ""
fail = false
started-dir = ""
stall-s = 0.0
"""


def write_tiny_app(root: Path) -> Path:
    pkg = root / "mypkg"
    pkg.mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT), encoding="utf-8")
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "server.py").write_text(SERVER_APP, encoding="utf-8")
    (pkg / "client.py").write_text(CLIENT_APP, encoding="utf-8")
    return root


def processes_of(run_dir: Path) -> list[int]:
    """Live processes started for this run folder (they all inherit its FLWR_HOME)."""
    needle = f"FLWR_HOME={run_dir.resolve() / 'flwr_home'}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                continue
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(name))
    return found


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A run folder; after the test no process of it may be alive (leftovers are killed)."""
    path = tmp_path / "run"
    yield path
    left = processes_of(path)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_tiny_app(tmp_path / "app")


@pytest.mark.slow
def test_two_nodes_two_rounds_complete(app_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    polls: list[float] = []
    spec = SimulationSpec(
        app_dir=app_dir,
        run_dir=run_dir,
        num_supernodes=2,
        run_config={"result-path": str(result), "num-rounds": 2},
        cpus_per_client=1,
        total_cpus=2,
        timeout_s=300,
    )
    outcome = run_simulation_app(spec, on_poll=lambda: polls.append(time.monotonic()))

    assert outcome.ok and outcome.status == "finished:completed", outcome
    rounds = json.loads(result.read_text(encoding="utf-8"))["rounds"]
    assert len(rounds) == 2
    for r, replies in enumerate(rounds):
        assert sorted(m["partition-id"] for m in replies) == [0, 1], replies
        assert all(m["round"] == r for m in replies)
    # Everything the run wrote stays in the run folder: FLWR_HOME, Ray's sessions, the log.
    assert list((run_dir / "flwr_home" / "apps").iterdir())
    assert list((run_dir / "ray" / "ray").glob("session_*"))
    assert outcome.log_path == run_dir / "simulation.log" and outcome.log_path.is_file()
    assert "Starting Flower Simulation" in outcome.log_path.read_text(encoding="utf-8")
    assert len(polls) >= 4 and max(b - a for a, b in itertools.pairwise(polls)) < 5
    assert set(outcome.phases_s) == {"superlink_start", "submit", "run", "cleanup"}


@pytest.mark.slow
def test_failing_serverapp_raises_step_error_with_log_tail(
    app_dir: Path, run_dir: Path, tmp_path: Path
) -> None:
    spec = SimulationSpec(
        app_dir=app_dir,
        run_dir=run_dir,
        num_supernodes=2,
        run_config={"result-path": str(tmp_path / "result.json"), "fail": True},
        total_cpus=2,
        timeout_s=300,
    )
    with pytest.raises(StepError) as err:
        run_simulation_app(spec)
    message = str(err.value)
    first_line, tail = message.split("\n", 1)
    assert "finished:failed" in first_line and str(run_dir / "simulation.log") in first_line
    # The tail shows the ServerApp's own traceback, without colour codes or HTTP access lines.
    assert "RuntimeError: tiny serverapp failed on purpose" in tail
    assert "\x1b[" not in tail and "uvicorn.access" not in tail


@pytest.mark.slow
def test_interrupt_while_clients_run_leaves_no_process(
    app_dir: Path, run_dir: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    started.mkdir()
    spec = SimulationSpec(
        app_dir=app_dir,
        run_dir=run_dir,
        num_supernodes=2,
        run_config={
            "result-path": str(tmp_path / "result.json"),
            "started-dir": str(started),
            "stall-s": 120.0,
        },
        total_cpus=2,
        timeout_s=300,
    )
    seen: dict[str, int] = {}

    def interrupt_once_clients_run() -> None:
        if any(started.iterdir()):
            seen["live"] = len(processes_of(run_dir))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_simulation_app(spec, on_poll=interrupt_once_clients_run)
    assert seen["live"] >= 5  # SuperLink, SuperExec, simulation, Ray's daemons and actors
    assert processes_of(run_dir) == []  # the fixture checks again, after the test


LAUNCH_SCRIPT = """
import sys
from pathlib import Path
from step_sim.flower_runner import SimulationSpec, run_simulation_app
app, run, started = (Path(a) for a in sys.argv[1:4])
run_config = {"started-dir": str(started), "stall-s": 120.0}
spec = SimulationSpec(app_dir=app, run_dir=run, num_supernodes=2, run_config=run_config,
                      total_cpus=2, timeout_s=300)
run_simulation_app(spec)
"""


@pytest.mark.slow
def test_launcher_killed_with_sigkill_leaves_no_process(
    app_dir: Path, run_dir: Path, tmp_path: Path
) -> None:
    """No `finally` runs on SIGKILL (nor on SIGTERM or SIGHUP): the watchdog sweeps."""
    started = tmp_path / "started"
    started.mkdir()
    repo = Path(__file__).resolve().parents[2]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCH_SCRIPT, str(app_dir), str(run_dir), str(started)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        deadline = time.monotonic() + 120
        while not any(started.iterdir()) and time.monotonic() < deadline:
            assert launcher.poll() is None, "the launcher ended before the clients started"
            time.sleep(0.2)
        assert any(started.iterdir()), "the clients never started"
        assert len(processes_of(run_dir)) >= 5
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 20
    while processes_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: _describe(pid) for pid in processes_of(run_dir)}
    assert left == {}


def _describe(pid: int) -> str:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:3]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        return f"{cmd} marker={b'STEP_LAUNCH_MARKER' in env} stat={stat}"
    except OSError:
        return "gone"


def test_port_taken_between_probe_and_bind_is_retried(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    ports = iter([taken, free_port()])
    monkeypatch.setattr(launcher, "free_port", lambda: next(ports))
    run_dir.mkdir(parents=True)
    log = run_dir / "simulation.log"
    log.touch()
    exes = flower_runner._executables()
    try:
        marker = uuid.uuid4().hex
        with ChildProcesses(marker) as procs:
            env = flower_runner._child_env(
                run_dir / "flwr_home", run_dir / "ray", marker, exes["flwr"].parent
            )
            superlink = flower_runner._start_superlink(procs, exes, env, run_dir, None)
            assert superlink.port != taken and superlink.proc.poll() is None
    finally:
        busy.close()
    assert "address already in use" in log.read_text(encoding="utf-8").lower()


def test_spec_errors_name_the_field_and_the_fix(app_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StepError, match=r"no pyproject\.toml"):
        SimulationSpec(app_dir=tmp_path, run_dir=tmp_path / "r", num_supernodes=2)
    with pytest.raises(StepError, match="raise total_cpus"):
        SimulationSpec(
            app_dir=app_dir,
            run_dir=tmp_path / "r",
            num_supernodes=2,
            cpus_per_client=4,
            total_cpus=2,
        )
    with pytest.raises(StepError, match="whole number"):
        SimulationSpec(
            app_dir=app_dir,
            run_dir=tmp_path / "r",
            num_supernodes=2,
            cpus_per_client=0.5,  # type: ignore[arg-type]
        )
    with pytest.raises(StepError, match="'nope' is not in"):
        SimulationSpec(
            app_dir=app_dir, run_dir=tmp_path / "r", num_supernodes=2, run_config={"nope": 1}
        )
    with pytest.raises(StepError, match="not a TOML key"):
        SimulationSpec(
            app_dir=app_dir, run_dir=tmp_path / "r", num_supernodes=2, run_config={"a b": 1}
        )
    with pytest.raises(StepError, match="use a string, integer, float or bool"):
        SimulationSpec(
            app_dir=app_dir,
            run_dir=tmp_path / "r",
            num_supernodes=2,
            run_config={"fail": None},  # type: ignore[dict-item]
        )


def test_missing_flower_is_a_step_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StepError, match="flower-superlink not found"):
        flower_runner._executables()
