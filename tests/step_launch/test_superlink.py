"""The SuperLink launcher: its command lines, and its start, bind race and failures against a
stand-in ``flower-superlink`` (a few lines of Python that bind ``--port`` as the real one does).
The real one runs in tests/step_sim and tests/deploy."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from step_common.errors import StepError
from step_launch import superlink as launcher
from step_launch.processes import ChildProcesses, free_port, new_marker, port_open
from step_launch.superlink import (
    PortInUse,
    SuperLink,
    SuperLinkSpec,
    SuperLinkTls,
    start_on_free_port,
)

STAND_IN = """\
import socket, sys, time
args = sys.argv[1:]
mode = open(sys.argv[0] + ".mode").read().strip()
port = int(args[args.index("--port") + 1])
if mode == "crash":
    print("something is wrong with the database", flush=True)
    sys.exit(3)
s = socket.socket()
try:
    s.bind(("127.0.0.1", port))
except OSError as e:
    print(f"ERROR: {e}", flush=True)
    sys.exit(1)
if mode == "serve":
    s.listen()
    print(f"INFO: Uvicorn running on http://127.0.0.1:{port}", flush=True)
time.sleep(60)
"""


@pytest.fixture
def procs() -> Iterator[ChildProcesses]:
    with ChildProcesses(new_marker()) as children:
        yield children


def _stand_in(tmp_path: Path, mode: str) -> Path:
    exe = tmp_path / "flower-superlink"
    exe.write_text(f"#!{sys.executable}\n{STAND_IN}", encoding="utf-8")
    exe.chmod(0o755)
    Path(f"{exe}.mode").write_text(mode, encoding="utf-8")
    return exe


def _spec(tmp_path: Path, mode: str, port: int, **kw: object) -> SuperLinkSpec:
    return SuperLinkSpec(
        executable=_stand_in(tmp_path, mode),
        database=tmp_path / "superlink.db",
        control_port=port,
        log_path=tmp_path / "superlink.log",
        simulation=True,
        ready_line=f"Uvicorn running on http://127.0.0.1:{port}",
        **kw,  # type: ignore[arg-type]
    )


def test_simulation_and_deployment_command_lines() -> None:
    sim = SuperLinkSpec("fsl", Path("/r/superlink.db"), 4711, Path("/r/log"), simulation=True)
    assert sim.argv() == ["fsl", "--insecure", "--simulation",
                          "--disable-runtime-dependency-installation",
                          "--database", "/r/superlink.db",
                          "--host", "127.0.0.1", "--port", "4711"]  # fmt: skip
    assert sim.ports() == [4711]
    tls = SuperLinkTls(Path("/t/ca.crt"), Path("/t/server.crt"), Path("/t/server.key"))
    deploy = SuperLinkSpec("fsl", Path("/s/superlink.db"), 9093, Path("/l"), tls=tls,
                           fleet_address="0.0.0.0:9092", supernode_auth=True)  # fmt: skip
    assert deploy.argv() == ["fsl", "--ssl-ca-certfile", "/t/ca.crt",
                             "--ssl-certfile", "/t/server.crt", "--ssl-keyfile", "/t/server.key",
                             "--enable-supernode-auth",
                             "--disable-runtime-dependency-installation",
                             "--database", "/s/superlink.db",
                             "--fleet-api-address", "0.0.0.0:9092",
                             "--host", "127.0.0.1", "--port", "9093"]  # fmt: skip
    assert deploy.ports() == [9093, 9092]


def test_start_returns_once_it_serves_and_stop_ends_it(
    procs: ChildProcesses, tmp_path: Path
) -> None:
    polls: list[int] = []
    link = SuperLink.start(
        procs,
        _spec(tmp_path, "serve", free_port()),
        dict(os.environ),
        on_poll=lambda: polls.append(1),
    )
    assert link.proc.poll() is None and port_open(link.port) and polls
    log = (tmp_path / "superlink.log").read_text(encoding="utf-8")
    assert log.startswith(f"$ {tmp_path / 'flower-superlink'} --insecure --simulation")
    link.stop()
    assert link.proc.poll() is not None and not port_open(link.port)


def test_a_crash_at_start_names_the_log_and_shows_its_tail(
    procs: ChildProcesses, tmp_path: Path
) -> None:
    (tmp_path / "superlink.log").write_text("an earlier launch\n", encoding="utf-8")
    with pytest.raises(StepError) as err:
        SuperLink.start(procs, _spec(tmp_path, "crash", free_port()), dict(os.environ))
    first, tail = str(err.value).split("\n", 1)
    assert "exited at start (exit code 3)" in first and str(tmp_path / "superlink.log") in first
    assert "something is wrong with the database" in tail and "earlier launch" not in tail
    assert not isinstance(err.value, PortInUse)


def test_a_superlink_that_never_serves_times_out_with_the_fix(
    procs: ChildProcesses, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, "silent", free_port(), start_timeout_s=0.5, slow_fix="wait longer")
    with pytest.raises(StepError, match=r"did not start within 0 s: see .*superlink\.log; wait"):
        SuperLink.start(procs, spec, dict(os.environ))


def test_a_port_taken_after_the_probe_is_retried_on_a_new_one(
    procs: ChildProcesses, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(launcher, "free_port", lambda: next(ports))
        with pytest.raises(PortInUse):
            SuperLink.start(procs, _spec(tmp_path, "serve", taken), dict(os.environ))
        link = start_on_free_port(
            procs, lambda port: _spec(tmp_path, "serve", port), dict(os.environ)
        )
        assert link.port != taken and link.proc.poll() is None

        monkeypatch.setattr(launcher, "free_port", lambda: taken)
        with pytest.raises(StepError, match=r"no free port held .* in 2 tries"):
            start_on_free_port(
                procs, lambda port: _spec(tmp_path, "serve", port), dict(os.environ), attempts=2
            )
