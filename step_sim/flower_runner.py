"""Run a Flower App on Flower's simulation engine, and always clean up after it.

The path (flwr 1.39, no deprecated API):

1. start a simulation SuperLink by hand::

       flower-superlink --insecure --simulation --disable-runtime-dependency-installation \\
           --database RUN/superlink.db --host 127.0.0.1 --port PORT

   In simulation mode the SuperLink opens exactly one port, the HTTP port that carries both the
   Control API (``flwr`` CLI) and the Runtime API (its SuperExec and the simulation process); no
   Fleet API is started. ``--disable-runtime-dependency-installation`` stops it from running
   ``uv sync`` per run (which would download a CUDA torch).
2. write a connection named ``step-sim`` into ``$FLWR_HOME/config.toml`` and submit::

       flwr run APP_DIR step-sim --run-config RUN/run_config.toml --format json \\
           --federation-config 'num-supernodes=N client-resources-num-cpus=C init-args-num-cpus=T'

   (``options.*`` in the connection are deprecated in 1.39; ``--federation-config`` replaces
   them. Run-config overrides go through a TOML file so strings with spaces survive.)
3. stream the run's logs with ``flwr log RUN_ID step-sim --stream`` (it returns when the run
   ends) and read the outcome with ``flwr ls --run-id RUN_ID step-sim --format json``:
   ``flwr run`` exits 0 even when the run later fails, the status is what counts.

The SuperLink launcher and the flwr CLI calls are step-coord's too (step_launch/superlink.py,
step_launch/flwr_control.py); this module adds the simulation's parts. Cleanup: every child
process, and whatever it starts in new sessions (SuperExec, the simulation process, Ray), is
gone on every exit path: see step_launch/processes.py.

Everything the run writes stays in ``run_dir``: ``flwr_home/`` (``FLWR_HOME``: CLI config,
installed FABs), ``ray/`` (``RAY_TMPDIR``: Ray sessions and logs), ``superlink.db``,
``run_config.toml`` and ``simulation.log`` (SuperLink output, CLI output and the run's
ServerApp/ClientApp logs, one file). Ray's Unix socket paths must fit in 107 bytes, so when
``run_dir`` is deep, ``RAY_TMPDIR`` is a short symlink in the system temp folder that points into
``run_dir/ray`` (removed afterwards); Ray's files still land in ``run_dir``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from step_common.errors import StepError
from step_common.fileio import FSYNC_ENV
from step_launch.flwr_cli import flower_env, log_tail
from step_launch.flwr_control import (
    ConfigValue,
    Connection,
    FlwrAnswer,
    FlwrCli,
    RunStatus,
    run_config_toml,
    write_connection,
    write_run_config,
)
from step_launch.processes import ChildProcesses, new_marker, watchdog
from step_launch.superlink import HOST as SUPERLINK_HOST
from step_launch.superlink import SuperLink, SuperLinkSpec, start_on_free_port

CONNECTION_NAME = "step-sim"
"""Name of the SuperLink connection written into ``$FLWR_HOME/config.toml``."""

LOG_NAME = "simulation.log"

_POLL_S = 0.5
_STATUS_EVERY_S = 10.0  # `flwr ls` costs ~0.8 s CPU; the log stream ending is the main signal
_STATUS_EVERY_AFTER_STREAM_S = 2.0
_SUPERLINK_START_TIMEOUT_S = 60.0
_CLI_TIMEOUT_S = 120.0
_PORT_ATTEMPTS = 3
_LOG_DRAIN_S = 10.0
# Ray binds Unix sockets at RAY_TMPDIR + "/ray/session_<date>_<time>_<usec>_<pid>/sockets/
# plasma_store" and refuses paths over 107 bytes; 75 bytes covers the suffix with a 7-digit pid.
_AF_UNIX_MAX = 107
_RAY_SOCKET_SUFFIX = 75
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class SimulationSpec:
    """One simulation: which Flower App, where it writes, how big the federation is."""

    app_dir: Path
    """The Flower App folder: a ``pyproject.toml`` with ``[tool.flwr.app]`` components."""
    run_dir: Path
    """Everything the run writes: FLWR_HOME, Ray's temp dir, SuperLink database, logs."""
    num_supernodes: int
    """Simulated SuperNodes (virtual institutions); ``node_config["partition-id"]`` is 0..N-1."""
    run_config: dict[str, ConfigValue] = field(default_factory=dict)
    """Overrides of ``[tool.flwr.app.config]``; dotted keys address nested tables."""
    cpus_per_client: int = 1
    """Ray CPUs per ClientApp actor. Flower 1.39 carries this as an integer
    (``SimulationConfig.client_resources_num_cpus``), so fractions are not possible.
    Concurrent actors = total_cpus // cpus_per_client."""
    total_cpus: int | None = None
    """CPUs given to Ray (``ray.init(num_cpus=...)``); None: the CPUs this process may use."""
    timeout_s: float = 3600.0
    """Wall-clock limit from launch (SuperLink start included); past it the run is stopped and a
    StepError raised."""

    def __post_init__(self) -> None:
        self.app_dir = Path(self.app_dir)
        self.run_dir = Path(self.run_dir)
        if not (self.app_dir / "pyproject.toml").is_file():
            raise StepError(
                f"{self.app_dir} has no pyproject.toml: point app_dir at a Flower App folder"
            )
        if self.num_supernodes < 1:
            raise StepError(f"num_supernodes is {self.num_supernodes}: use 1 or more")
        if isinstance(self.cpus_per_client, bool) or not isinstance(self.cpus_per_client, int):
            raise StepError(
                f"cpus_per_client is {self.cpus_per_client!r}: use a whole number of CPUs "
                "(Flower 1.39 accepts only integers)"
            )
        if self.cpus_per_client < 1:
            raise StepError(f"cpus_per_client is {self.cpus_per_client}: use 1 or more")
        if self.total_cpus is not None and self.total_cpus < self.cpus_per_client:
            raise StepError(
                f"total_cpus ({self.total_cpus}) is below cpus_per_client "
                f"({self.cpus_per_client}): no ClientApp could start; raise total_cpus"
            )
        if not self.timeout_s > 0:
            raise StepError(f"timeout_s is {self.timeout_s}: use a positive number of seconds")
        known = _app_config_keys(self.app_dir / "pyproject.toml")
        for key in self.run_config:
            if not all(_BARE_KEY.match(part) for part in key.split(".")):
                raise StepError(
                    f"run_config key {key!r} is not a TOML key: use letters, digits, '-', '_' "
                    "and '.' between table names"
                )
            if key not in known:
                raise StepError(
                    f"run_config key {key!r} is not in [tool.flwr.app.config] of "
                    f"{self.app_dir / 'pyproject.toml'}: use one of {', '.join(sorted(known))} "
                    "or add it there"
                )
        run_config_toml(self.run_config)  # a value TOML cannot hold fails here, before launch


def _app_config_keys(pyproject: Path) -> set[str]:
    """The flattened keys of ``[tool.flwr.app.config]`` (Flower rejects overrides of others,
    but only once the run has started)."""
    try:
        doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise StepError(f"{pyproject} cannot be read as TOML ({e}): fix the file") from None
    config = doc.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})

    def flat(table: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, value in table.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return set(flat(config, "")) if isinstance(config, dict) else set()


@dataclass
class SimulationOutcome:
    """How a simulation run ended."""

    run_id: int
    status: str
    """Flower's run status: ``finished:completed``, ``finished:failed``, ``finished:stopped``."""
    ok: bool
    """True when status is ``finished:completed``."""
    wall_s: float
    """From launch (SuperLink start) to cleanup done."""
    log_path: Path
    """SuperLink output, CLI output and the run's ServerApp/ClientApp logs."""
    details: str = ""
    """Flower's status details (the exception message of a failed run)."""
    phases_s: dict[str, float] = field(default_factory=dict)
    """Seconds spent in: superlink_start, submit, run (submit done to finished), cleanup."""


def run_simulation_app(
    spec: SimulationSpec,
    on_poll: Callable[[], None] | None = None,
    *,
    check: bool = True,
) -> SimulationOutcome:
    """Run ``spec.app_dir`` on a fresh simulation SuperLink and wait until the run ends.

    ``on_poll`` is called about every 0.5 s while waiting (e.g. to refresh a progress display).
    With ``check`` (the default) a run that does not end ``finished:completed`` raises a
    StepError whose message ends with the tail of the log; with ``check=False`` it is returned
    with ``ok=False``. Starting problems (no ``flower-superlink``, no free port, SuperLink
    crash, timeout) always raise StepError. All child processes are gone when this returns or
    raises, KeyboardInterrupt included.
    """
    t0 = time.monotonic()
    exes = _executables()  # before anything is written: a missing Flower leaves no run folder
    launch = _Launch.prepare(spec, on_poll, t0)
    marker = new_marker()
    with (
        _ray_tmpdir(launch.run_dir / "ray") as ray_tmp,
        watchdog(marker, ray_tmp),
        ChildProcesses(marker) as procs,
    ):
        env = _child_env(launch.flwr_home, ray_tmp, marker, exes["flwr"].parent)
        cli = FlwrCli(exes["flwr"], env, procs.run, _CLI_TIMEOUT_S)
        with launch.phase("superlink_start"):
            superlink = _start_superlink(procs, exes, env, launch.run_dir, on_poll)
        write_connection(
            launch.flwr_home,
            Connection(CONNECTION_NAME, f"{SUPERLINK_HOST}:{superlink.port}"),
            "Written by step-sim for one launch: the simulation SuperLink it started.",
        )
        with launch.phase("submit"):
            run_id = _submit(cli, launch)
        with launch.phase("run"):
            status = _wait_for_run(procs, cli, launch, superlink, run_id)
        log_end = launch.log_path.stat().st_size  # the tail should end with the run, not our stop
        cleanup_from = time.monotonic()
    launch.phases["cleanup"] = time.monotonic() - cleanup_from
    return _outcome(launch, run_id, status, log_end, check=check)


@dataclass
class _Launch:
    """What the phases of one ``run_simulation_app`` call share."""

    spec: SimulationSpec
    app_dir: Path
    run_dir: Path
    log_start: int
    """Where this launch's part of the (appended) log begins."""
    t0: float
    on_poll: Callable[[], None] | None
    phases: dict[str, float] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls, spec: SimulationSpec, on_poll: Callable[[], None] | None, t0: float
    ) -> _Launch:
        """The run folder ready for a launch: its folders, the log's header, no stale state."""
        run_dir = spec.run_dir.resolve()
        for d in (run_dir, run_dir / "flwr_home", run_dir / "ray"):
            d.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / LOG_NAME
        with log_path.open("a", encoding="utf-8") as f:
            f.write(f"=== step-sim launch {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ===\n")
        db_path = run_dir / "superlink.db"
        for stale in ("", "-wal", "-shm"):  # state of an earlier launch only confuses this one
            Path(f"{db_path}{stale}").unlink(missing_ok=True)
        return cls(spec, spec.app_dir.resolve(), run_dir, log_path.stat().st_size, t0, on_poll)

    @property
    def flwr_home(self) -> Path:
        return self.run_dir / "flwr_home"

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    def poll(self) -> None:
        if self.on_poll is not None:
            self.on_poll()

    def tail(self, end: int | None = None) -> str:
        return log_tail(self.log_path, start=self.log_start, end=end)

    def log_cli(self, answer: FlwrAnswer) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write("$ " + " ".join(answer.argv) + "\n" + answer.stdout + answer.stderr)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.phases[name] = time.monotonic() - start


def _outcome(
    launch: _Launch, run_id: int, status: RunStatus, log_end: int, *, check: bool
) -> SimulationOutcome:
    outcome = SimulationOutcome(
        run_id=run_id,
        status=status.status,
        ok=status.status == "finished:completed",
        wall_s=time.monotonic() - launch.t0,
        log_path=launch.log_path,
        details=status.details,
        phases_s=launch.phases,
    )
    if check and not outcome.ok:
        raise StepError(
            f"Flower run {run_id} ended {status.status!r} ({status.details or 'no details'}): "
            f"fix the cause shown in the log tail below; full log: {launch.log_path}\n"
            + launch.tail(end=log_end)
        )
    return outcome


# --- executables and environment ---------------------------------------------------------


def _executables() -> dict[str, Path]:
    """flower-superlink and flwr next to this interpreter, else on PATH."""
    found: dict[str, Path] = {}
    bin_dir = Path(sys.executable).parent
    # flower-superexec and flwr-simulation are started *by name* by the SuperLink.
    for name in ("flower-superlink", "flwr", "flower-superexec", "flwr-simulation"):
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found[name] = candidate
            continue
        on_path = _which(name)
        if on_path is None:
            raise StepError(
                f"{name} not found next to {sys.executable} nor on PATH: install the "
                "project (pip install -e .) so that flwr[simulation]==1.39.* is present"
            )
        found[name] = on_path
    return found


def _which(name: str) -> Path | None:
    import shutil

    hit = shutil.which(name)
    return Path(hit) if hit else None


def _child_env(flwr_home: Path, ray_tmp: Path, marker: str, bin_dir: Path) -> dict[str, str]:
    """step_launch's Flower environment (FLWR_HOME, no telemetry or update check, the marker)
    plus the simulation's: Ray in the run folder, no dependency installation."""
    env = flower_env(flwr_home, marker)
    # An inherited RAY_ADDRESS would attach the simulation to someone else's Ray cluster; the
    # internal flag would make the SuperLink open a second (gRPC Control API) port.
    for key in ("RAY_ADDRESS", "FLWR_INTERNAL_GRPC_CONTROL_API"):
        env.pop(key, None)
    env.update(
        {
            "RAY_TMPDIR": str(ray_tmp),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            # The flwr found by _executables (maybe on PATH) starts its siblings by name.
            "PATH": str(bin_dir) + os.pathsep + os.environ.get("PATH", ""),
        }
    )
    env.setdefault(FSYNC_ENV, "0")  # virtual institutions on one machine: atomic, not durable
    return env


@contextlib.contextmanager
def _ray_tmpdir(ray_dir: Path) -> Iterator[Path]:
    """``ray_dir`` itself when short enough for Ray's socket paths, else a short symlink to it."""
    if len(os.fsencode(ray_dir)) + _RAY_SOCKET_SUFFIX <= _AF_UNIX_MAX:
        yield ray_dir
        return
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    holder = Path(tempfile.mkdtemp(prefix="stepsim-", dir=base))
    link = holder / "r"
    link.symlink_to(ray_dir, target_is_directory=True)
    if len(os.fsencode(link)) + _RAY_SOCKET_SUFFIX > _AF_UNIX_MAX:
        link.unlink()
        holder.rmdir()
        raise StepError(
            f"no temp folder short enough for Ray's socket paths ({link}): set TMPDIR to a "
            "short path such as /tmp"
        )
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)
        _repoint_session_latest(ray_dir)
        with contextlib.suppress(OSError):
            holder.rmdir()


def _repoint_session_latest(ray_dir: Path) -> None:
    """Ray's ``session_latest`` link names the short temp path; point it into ``ray_dir``."""
    latest = ray_dir / "ray" / "session_latest"
    if latest.is_symlink():
        target = Path(os.readlink(latest)).name
        if (ray_dir / "ray" / target).is_dir():
            latest.unlink()
            latest.symlink_to(target, target_is_directory=True)


# --- the three phases ----------------------------------------------------------------------


def _start_superlink(
    procs: ChildProcesses,
    exes: dict[str, Path],
    env: dict[str, str],
    run_dir: Path,
    on_poll: Callable[[], None] | None,
) -> SuperLink:
    """The simulation SuperLink on a free port (a new port on a bind race), once it serves."""

    def spec_for(port: int) -> SuperLinkSpec:
        return SuperLinkSpec(
            executable=exes["flower-superlink"],
            database=run_dir / "superlink.db",
            control_port=port,
            log_path=run_dir / LOG_NAME,
            simulation=True,
            # The port was free when probed: the line proves that this SuperLink holds it.
            ready_line=f"Uvicorn running on http://{SUPERLINK_HOST}:{port}",
            start_timeout_s=_SUPERLINK_START_TIMEOUT_S,
        )

    return start_on_free_port(procs, spec_for, env, on_poll=on_poll, attempts=_PORT_ATTEMPTS)


def _submit(cli: FlwrCli, launch: _Launch) -> int:
    """``flwr run``: build the FAB, start the run; return its run id."""
    spec = launch.spec
    total_cpus = spec.total_cpus if spec.total_cpus is not None else _available_cpus()
    federation = (
        f"num-supernodes={spec.num_supernodes} "
        f"client-resources-num-cpus={spec.cpus_per_client} "
        f"init-args-num-cpus={total_cpus}"
    )
    overrides = None
    if spec.run_config:
        overrides = write_run_config(launch.run_dir / "run_config.toml", spec.run_config)
    answer = cli.submit(
        launch.app_dir, CONNECTION_NAME, run_config=overrides, federation_config=federation
    )
    launch.log_cli(answer)
    run_id = answer.reply.get("run-id") if answer.reply else None
    if not answer.ok or run_id is None:
        raise StepError(
            f"flwr run could not start the run ({answer.why or f'exit code {answer.code}'}): "
            f"fix the Flower App in {launch.app_dir} or the run_config keys; full log: "
            f"{launch.log_path}\n" + launch.tail()
        )
    return int(run_id)


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _wait_for_run(
    procs: ChildProcesses, cli: FlwrCli, launch: _Launch, superlink: SuperLink, run_id: int
) -> RunStatus:
    """Stream the run's logs into the log file until it finishes; return its status."""
    with launch.log_path.open("ab") as log:
        argv = [cli.flwr, "log", str(run_id), CONNECTION_NAME, "--stream"]
        stream = procs.spawn(argv, cli.env, log, log)
    status = _poll_until_finished(cli, launch, superlink, stream, run_id)
    # Let the stream deliver the run's last lines (it returns by itself once they are out).
    drain_until = time.monotonic() + _LOG_DRAIN_S
    while stream.poll() is None and time.monotonic() < drain_until:
        launch.poll()
        time.sleep(0.1)
    if stream.poll() is None:
        procs.stop(stream)
    return status


def _poll_until_finished(
    cli: FlwrCli,
    launch: _Launch,
    superlink: SuperLink,
    stream: subprocess.Popen[bytes],
    run_id: int,
) -> RunStatus:
    """The run's status once finished; ``flwr ls`` mostly once the log stream has ended."""
    deadline = launch.t0 + launch.spec.timeout_s
    next_status = time.monotonic() + _STATUS_EVERY_S
    status = RunStatus("unknown")
    while True:
        launch.poll()
        if superlink.proc.poll() is not None:
            raise StepError(
                f"the Flower SuperLink stopped during run {run_id} (exit code "
                f"{superlink.proc.returncode}): see {launch.log_path}\n" + launch.tail()
            )
        stream_ended = stream.poll() is not None
        now = time.monotonic()
        if stream_ended or now >= next_status:
            status = cli.run_status(CONNECTION_NAME, run_id)
            if status.finished:
                return status
            every = _STATUS_EVERY_AFTER_STREAM_S if stream_ended else _STATUS_EVERY_S
            next_status = time.monotonic() + every
        if now >= deadline:
            _stop_late_run(cli, launch, run_id, status)
        time.sleep(_POLL_S)


def _stop_late_run(cli: FlwrCli, launch: _Launch, run_id: int, status: RunStatus) -> NoReturn:
    """Stop a run past ``timeout_s`` and say so (its last known status in the message)."""
    with contextlib.suppress(StepError):
        status = cli.run_status(CONNECTION_NAME, run_id)
        cli.run([cli.flwr, "stop", str(run_id), CONNECTION_NAME], cli.env, 30.0)
    raise StepError(
        f"Flower run {run_id} did not finish within timeout_s={launch.spec.timeout_s:g} s "
        f"(status {status.status!r}): raise SimulationSpec.timeout_s or shorten the run; "
        f"log: {launch.log_path}\n" + launch.tail()
    )
