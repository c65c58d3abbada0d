"""Child processes that never outlive their launcher.

Flower's SuperLink and SuperNode start helpers (SuperExec, ServerApp/ClientApp processes, Ray) in
*new sessions*, so killing a launcher's process group does not reach them. Every child therefore
carries a random marker in its environment; on every exit path (success, failure, exception,
KeyboardInterrupt) the launcher terminates its own process groups, every descendant it can see,
and every process that carries the marker (SIGTERM, then SIGKILL after a grace period). A small
watchdog process (its own session, stdlib only) does the same sweep when the launcher dies
without running ``finally`` (SIGKILL, SIGTERM, SIGHUP): marked processes, their process groups
and their descendants (Ray's agents write their process title over their environment, marker
included).

Used by step-sim (simulation), step-coord (SuperLink) and step-node (SuperNode).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from step_common.errors import StepError

MARKER_ENV = "STEP_LAUNCH_MARKER"
TERM_GRACE_S = 5.0


def new_marker() -> str:
    return uuid.uuid4().hex


def free_port() -> int:
    """A TCP port free on loopback now (a race with other programs stays possible: retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid exists (one of another user's counts as alive)."""
    try:
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


WATCHDOG = Path(__file__).with_name("watchdog.py")
"""Run by path with ``-I -S``: the standard library only, whatever the environment."""


@contextlib.contextmanager
def watchdog(marker: str, symlink: Path | None = None) -> Iterator[None]:
    """A tiny process that, once this launcher ends (even by SIGKILL, SIGTERM or a closed
    terminal, when no ``finally`` runs), terminates whatever still carries the marker."""
    if not Path("/proc").is_dir():
        yield
        return
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    guard = subprocess.Popen(
        [sys.executable, "-I", "-S", str(WATCHDOG), f"{MARKER_ENV}={marker}"]
        + ([str(symlink.parent)] if symlink is not None and symlink.is_symlink() else []),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        if guard.stdin is not None:
            guard.stdin.close()
        # Its last sweep waits for 3 quiet seconds; it runs on by itself (own session), and
        # finds nothing when this launcher cleaned up after itself.
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.wait(timeout=0.5)


class ChildProcesses:
    """Starts children in their own sessions; on exit terminates them and everything marked."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> ChildProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate_all()

    def spawn(
        self,
        argv: Sequence[str | Path],
        env: dict[str, str],
        stdout: IO[bytes] | int,
        stderr: IO[bytes] | int,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self.children.append(proc)
        return proc

    def run(
        self, argv: Sequence[str | Path], env: dict[str, str], timeout_s: float
    ) -> tuple[int, str, str]:
        """Run a short CLI command to completion: (exit code, stdout, stderr)."""
        proc = self.spawn(argv, env, subprocess.PIPE, subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise StepError(
                f"{Path(str(argv[0])).name} {argv[1]} did not answer within {timeout_s:.0f} s: "
                "the machine may be overloaded; retry when it is less busy"
            ) from None
        self.children.remove(proc)
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = TERM_GRACE_S) -> None:
        """Terminate one child's process group (SIGTERM, then SIGKILL) and reap it."""
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers left in the group
        if proc in self.children:
            self.children.remove(proc)

    def terminate_all(self) -> None:
        """SIGTERM to our groups, their descendants and marked processes; SIGKILL what stays.

        A second Ctrl-C during these few seconds is ignored so that nothing is left behind.
        """
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            self._terminate_all()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _terminate_all(self) -> None:
        roots = [p.pid for p in self.children]
        targets = descendants(roots) | _marked(self.marker)
        for p in self.children:
            _signal_group(p.pid, signal.SIGTERM)
        for pid in targets:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE_S
        while time.monotonic() < deadline:
            for p in self.children:
                p.poll()
            alive = {pid for pid in targets if _alive(pid)}
            if all(p.returncode is not None for p in self.children) and not alive:
                break
            time.sleep(0.1)
        for p in self.children:
            _signal_group(p.pid, signal.SIGKILL)
        # Late children (spawned while we were terminating) carry the marker too.
        for _ in range(20):
            left = {pid for pid in targets | _marked(self.marker) if _alive(pid)}
            if not left:
                break
            for pid in left:
                _signal_pid(pid, signal.SIGKILL)
            time.sleep(0.1)
        for p in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=TERM_GRACE_S)
        self.children.clear()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def descendants(roots: Sequence[int]) -> set[int]:
    """Every process below ``roots`` (from /proc), the roots themselves not included."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _proc_stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _marked(marker: str) -> set[int]:
    """Processes whose environment carries this launch's marker."""
    needle = f"{MARKER_ENV}={marker}".encode()
    own = os.getpid()
    found: set[int] = set()
    for pid in _pids():
        if pid == own:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(pid)
    return found
