"""Runs step-coord and step-node as real processes on loopback, and always cleans them up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1")
    e["PATH"] = str(BIN) + os.pathsep + e.get("PATH", "")
    return e


def cli(tool: str, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *map(str, args)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def quick(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """A setup command (init, enroll, revoke) run in this process through its typer app: the
    code of the installed entry point without a new Python importing torch and Flower again
    (3-5 s a call on this machine; a deployment test makes up to 16)."""
    from typer.testing import CliRunner

    from coordinator.cli import app as coord_app
    from node.cli import app as node_app

    app = {"step-coord": coord_app, "step-node": node_app}[tool]
    argv = [str(a) for a in args]
    result = CliRunner().invoke(app, argv)
    return subprocess.CompletedProcess([tool, *argv], result.exit_code, result.stdout,
                                       result.stderr)  # fmt: skip


def last_json(out: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


class Processes:
    """Long-running CLIs in their own sessions; all terminated (then killed) on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, tool: str, *args: str | Path) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(BIN / tool), *map(str, args)],
            env=env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def wait(self, name: str, timeout: float) -> int:
        return self.procs[name].wait(timeout=timeout)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        # SIGTERM lets step-coord / step-node clean up their Flower children; SIGKILL what stays
        # (their watchdogs then sweep the children).
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


EVIL_TOML = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "evilapp"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "evil:server"
clientapp = "evil:client"

[tool.flwr.app.config]
marker = ""
delay = 0.0
"""

EVIL_PY = '''\
"""A foreign app: its ClientApp writes a marker file on the node it runs on."""
import time
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    Path(str(context.run_config["marker"])).write_text("foreign code ran here")
    return Message(RecordDict(), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    time.sleep(float(context.run_config["delay"]))  # lets the test sign it first
    ids = list(grid.get_node_ids())
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in ids]
    list(grid.send_and_receive(msgs, timeout=60))
'''


class Outsider:
    """Any process on the coordinator's host holding nothing but ca.crt: the flwr CLI against
    the Control API, and a foreign app whose ClientApp writes a marker file where it runs."""

    def __init__(self, tmp: Path, control: int, ca: Path) -> None:
        self.home, self.app = tmp / "outsider", tmp / "evilapp"
        self.home.mkdir()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "coord"\n\n[superlink.coord]\n'
            f'address = "127.0.0.1:{control}"\nroot-certificates = "{ca}"\n'
        )
        self.app.mkdir()
        (self.app / "pyproject.toml").write_text(EVIL_TOML)
        (self.app / "evil.py").write_text(EVIL_PY)

    def flwr(self, *args: str | Path) -> dict[str, Any]:
        """``flwr ARGS coord --format json``; its JSON answer (asserting success)."""
        reply = self._run(*args)
        assert reply.get("success"), reply
        return reply

    def submit(self, marker: Path, delay: float = 0.0) -> int:
        config = f"marker={json.dumps(str(marker))} delay={delay}"
        return int(self._run("run", self.app, "--run-config", config)["run-id"])

    def _run(self, *args: str | Path) -> dict[str, Any]:
        """``flwr ARGS`` against the coordinator's Control API, its JSON answer."""
        command, rest = str(args[0]), [str(a) for a in args[1:]]
        positional = [a for a in rest if not a.startswith("--")][:1] if command == "run" else rest
        options = rest[len(positional) :]
        done = subprocess.run(
            [str(BIN / "flwr"), command, *positional, "coord", "--format", "json", *options],
            env={**env(), "FLWR_HOME": str(self.home)}, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        reply: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
        return reply
