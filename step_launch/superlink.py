"""The one launcher of Flower's SuperLink, for step-sim and step-coord.

step-sim starts it in simulation mode (``--insecure --simulation``, one loopback port, no Fleet
API) on a port picked free at run time; step-coord starts it with TLS, SuperNode authentication
and a Fleet API on the ports of its settings. Both get the same command line otherwise
(``--disable-runtime-dependency-installation``: no ``uv sync`` per run, which would download a
CUDA torch), the same log handling, the same readiness wait and the same errors.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from step_common.errors import StepError
from step_launch.flwr_cli import log_tail
from step_launch.processes import ChildProcesses, free_port, port_open

_POLL_S = 0.1
HOST = "127.0.0.1"
"""The Control/Runtime API port is bound to loopback only: nobody else can manage the runs."""


@dataclass(frozen=True)
class SuperLinkTls:
    """The SuperLink's certificate (its SAN must include 127.0.0.1: its SuperExec connects)."""

    ca_cert: Path
    certfile: Path
    keyfile: Path


@dataclass(frozen=True)
class SuperLinkSpec:
    """One ``flower-superlink`` child: what it serves and how long it may take to come up."""

    executable: str | Path
    database: Path
    control_port: int
    """The HTTP(S) port on 127.0.0.1 of the Control API (flwr CLI) and the Runtime API."""
    log_path: Path
    """Its output is appended here, after the command line."""
    tls: SuperLinkTls | None = None
    """None: ``--insecure`` (the simulation, on loopback)."""
    simulation: bool = False
    fleet_address: str | None = None
    """HOST:PORT of the gRPC Fleet API where SuperNodes connect; None in simulation mode."""
    supernode_auth: bool = False
    """Only SuperNode keys registered through the Control API get in."""
    ready_line: str | None = None
    """A log line that must appear besides the open ports: proof that *this* process bound
    them (with ports picked free at run time, another program may hold one)."""
    start_timeout_s: float = 60.0
    slow_fix: str = "retry when the machine is less busy"
    """The fix named when the SuperLink does not come up in time."""

    def argv(self) -> list[str]:
        """The command line; flags in this order for both launchers."""
        if self.tls is None:
            argv = [str(self.executable), "--insecure"]
        else:
            argv = [str(self.executable), "--ssl-ca-certfile", str(self.tls.ca_cert),
                    "--ssl-certfile", str(self.tls.certfile),
                    "--ssl-keyfile", str(self.tls.keyfile)]  # fmt: skip
        if self.simulation:
            argv.append("--simulation")
        if self.supernode_auth:
            argv.append("--enable-supernode-auth")
        argv += ["--disable-runtime-dependency-installation", "--database", str(self.database)]
        if self.fleet_address is not None:
            argv += ["--fleet-api-address", self.fleet_address]
        return [*argv, "--host", HOST, "--port", str(self.control_port)]

    def ports(self) -> list[int]:
        """The ports that must accept connections before the SuperLink counts as up."""
        if self.fleet_address is None:
            return [self.control_port]
        return [self.control_port, int(self.fleet_address.rpartition(":")[2])]


class PortInUse(StepError):
    """The SuperLink exited because another program holds one of its ports."""


class SuperLink:
    """A running ``flower-superlink``, a child of ``procs`` (which stops it on exit anyway)."""

    def __init__(self, procs: ChildProcesses, spec: SuperLinkSpec, env: dict[str, str]) -> None:
        self.procs, self.spec = procs, spec
        log_path = spec.log_path
        self.log_start = log_path.stat().st_size if log_path.exists() else 0
        argv = spec.argv()
        with log_path.open("ab") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            self.proc = procs.spawn(argv, env, log, subprocess.STDOUT)

    @classmethod
    def start(
        cls,
        procs: ChildProcesses,
        spec: SuperLinkSpec,
        env: dict[str, str],
        *,
        on_poll: Callable[[], None] | None = None,
    ) -> SuperLink:
        """Start it and return once it serves; StepError (naming the log) when it does not.

        ``on_poll`` is called every 0.1 s meanwhile (a progress display, an interrupt check).
        """
        link = cls(procs, spec, env)
        deadline = time.monotonic() + spec.start_timeout_s
        while True:
            if on_poll is not None:
                on_poll()
            link._check_running()
            if link._serves():
                return link
            if time.monotonic() > deadline:
                raise StepError(
                    f"the Flower SuperLink did not start within {spec.start_timeout_s:.0f} s: "
                    f"see {spec.log_path}; {spec.slow_fix}\n" + link.tail()
                )
            time.sleep(_POLL_S)

    @property
    def port(self) -> int:
        return self.spec.control_port

    def tail(self) -> str:
        """The end of what this SuperLink (and what followed it) wrote to the log."""
        return log_tail(self.spec.log_path, start=self.log_start)

    def stop(self) -> None:
        self.procs.stop(self.proc)

    def _serves(self) -> bool:
        if self.spec.ready_line is not None and self.spec.ready_line not in self._output():
            return False
        return all(port_open(port) for port in self.spec.ports())

    def _output(self) -> str:
        with self.spec.log_path.open("rb") as f:
            f.seek(self.log_start)
            return f.read().decode("utf-8", errors="replace")

    def _check_running(self) -> None:
        """StepError when it has exited (PortInUse when another program holds its port)."""
        if self.proc.poll() is None:
            return
        # Read once it has exited: its last words are in the file by now.
        lowered = self._output().lower()
        self.stop()  # what it started in its process group
        message = (
            f"the Flower SuperLink exited at start (exit code {self.proc.returncode}): fix the "
            f"cause shown below; full log: {self.spec.log_path}\n" + self.tail()
        )
        if "address already in use" in lowered or "errno 98" in lowered:
            raise PortInUse(message)
        raise StepError(message)


def start_on_free_port(
    procs: ChildProcesses,
    spec_for: Callable[[int], SuperLinkSpec],
    env: dict[str, str],
    *,
    on_poll: Callable[[], None] | None = None,
    attempts: int = 3,
) -> SuperLink:
    """Start the SuperLink of ``spec_for(port)`` on a port free now; on a bind race (another
    program took the port between the probe and the bind) try a new port."""
    for _attempt in range(attempts):
        try:
            return SuperLink.start(procs, spec_for(free_port()), env, on_poll=on_poll)
        except PortInUse:
            continue
    raise StepError(
        f"no free port held for the Flower SuperLink in {attempts} tries: other programs are "
        "grabbing loopback ports; retry"
    )
