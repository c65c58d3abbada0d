"""The ``flwr`` CLI against one SuperLink, as step-sim and step-coord drive it: the connection
in ``$FLWR_HOME/config.toml``, run-config files, ``flwr ... --format json`` calls, submitting a
run and reading its status.

The TOML files are written with ``tomli_w``: any string (quotes, backslashes, newlines) comes
back from Flower's TOML reader exactly as given.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from step_common.errors import StepError
from step_common.fileio import atomic_write_text
from step_launch.flwr_cli import parse_json_stdout, strip_ansi

ConfigValue = str | int | float | bool

Runner = Callable[[Sequence[str | Path], dict[str, str], float], tuple[int, str, str]]
"""Runs a short command to completion: (argv, env, timeout_s) -> (exit code, stdout, stderr).
``ChildProcesses.run`` inside a launch, ``run_captured`` outside one."""

CLI_TIMEOUT_S = 120.0


# --- the files the flwr CLI reads --------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """A SuperLink connection of the flwr CLI (its Control API)."""

    name: str
    address: str
    """HOST:PORT of the Control API."""
    root_certificates: Path | None = None
    """The CA of the SuperLink's certificate; None: plain HTTP (``insecure = true``)."""


def write_connection(flwr_home: Path, connection: Connection, comment: str) -> Path:
    """``$FLWR_HOME/config.toml`` with ``connection`` as its only and default connection."""
    entry: dict[str, Any] = {"address": connection.address}
    if connection.root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(connection.root_certificates)
    doc = {"superlink": {"default": connection.name, connection.name: entry}}
    path = flwr_home / "config.toml"
    atomic_write_text(path, f"# {comment}\n" + tomli_w.dumps(doc))
    return path


def run_config_toml(values: Mapping[str, ConfigValue]) -> str:
    """Run-config overrides as TOML. A dotted key (``train.lr``) addresses a nested table, as
    the flattened keys of ``[tool.flwr.app.config]`` do."""
    doc: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(value, ConfigValue):
            raise StepError(
                f"run_config value of {key!r} is {value!r}: use a string, integer, float or bool"
            )
        *tables, leaf = key.split(".")
        table = doc
        for name in tables:
            table = table.setdefault(name, {})
            if not isinstance(table, dict):
                raise StepError(f"run_config key {key!r} extends a key given a value: drop one")
        if isinstance(table.get(leaf), dict):
            raise StepError(f"run_config key {key!r} is also a table of other keys: drop one")
        table[leaf] = value
    return tomli_w.dumps(doc)


def write_run_config(path: Path, values: Mapping[str, ConfigValue]) -> Path:
    """The file that ``flwr run --run-config PATH`` reads (strings with spaces survive it)."""
    atomic_write_text(path, run_config_toml(values))
    return path


# --- flwr calls ------------------------------------------------------------------------------


def run_captured(
    argv: Sequence[str | Path], env: dict[str, str], timeout_s: float
) -> tuple[int, str, str]:
    """A short command run to completion outside a launch (nothing to clean up after it)."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise StepError(
            f"`{Path(args[0]).name} {' '.join(args[1:3])}` did not answer within "
            f"{timeout_s:.0f} s: the machine may be overloaded; retry"
        ) from None
    return done.returncode, done.stdout, done.stderr


@dataclass(frozen=True)
class FlwrAnswer:
    """What one ``flwr ... --format json`` call said."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    reply: dict[str, Any] | None
    """The JSON object it printed, None when there was none."""

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.reply is not None and bool(self.reply.get("success"))

    @property
    def why(self) -> str:
        """Flower's error message, else what it printed (colour codes removed)."""
        message = (self.reply or {}).get("error-message")
        return str(message) if message else strip_ansi((self.stderr or self.stdout).strip())


@dataclass(frozen=True)
class RunStatus:
    status: str
    """``pending``, ``starting``, ``running``, ``finished:completed|failed|stopped``, or
    ``unknown`` when ``flwr ls`` could not tell (``details`` then says why)."""
    details: str = ""

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")


def parse_run_status(answer: FlwrAnswer) -> RunStatus:
    """The status of the one run a ``flwr ls --run-id ID`` call listed."""
    runs = answer.reply.get("runs") if answer.reply else None
    if answer.code != 0 or not isinstance(runs, list) or not runs or not isinstance(runs[0], dict):
        return RunStatus("unknown", strip_ansi((answer.stderr or answer.stdout).strip())[-500:])
    details = str(runs[0].get("status-details", ""))
    return RunStatus(str(runs[0].get("status", "unknown")), "" if details == "N/A" else details)


@dataclass(frozen=True)
class FlwrCli:
    """The ``flwr`` CLI of one launcher: executable, environment (its ``FLWR_HOME`` holds the
    connection) and how commands run."""

    flwr: str | Path
    env: dict[str, str]
    run: Runner = run_captured
    timeout_s: float = CLI_TIMEOUT_S

    def call(self, *args: str | Path, timeout_s: float | None = None) -> FlwrAnswer:
        """``flwr ARGS --format json``."""
        argv = [str(self.flwr), *(str(a) for a in args), "--format", "json"]
        code, out, err = self.run(argv, self.env, timeout_s or self.timeout_s)
        return FlwrAnswer(argv, code, out, err, parse_json_stdout(out))

    def submit(
        self,
        app_dir: Path,
        connection: str,
        *,
        run_config: Path | None = None,
        federation_config: str | None = None,
    ) -> FlwrAnswer:
        """``flwr run``: build the app's FAB and start a run (``reply["run-id"]`` when ok).
        ``flwr run`` exits 0 even when the run fails later: its status tells."""
        args: list[str | Path] = ["run", app_dir, connection]
        if run_config is not None:
            args += ["--run-config", run_config]
        if federation_config is not None:
            args += ["--federation-config", federation_config]
        return self.call(*args)

    def run_status(self, connection: str, run_id: int) -> RunStatus:
        return parse_run_status(self.call("ls", connection, "--run-id", str(run_id)))
