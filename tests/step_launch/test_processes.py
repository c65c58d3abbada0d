"""The watchdog sweeps what a launcher started, even processes that lost the launch marker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A launcher: under the watchdog, it starts one marked child in its own session (as the raylet).
# That child starts a grandchild in the same process group *without* the marker in its
# environment (as Ray's agents look once setproctitle has written over theirs). Once the watchdog
# kills the child, the grandchild is an orphan that only its process group ties to the launch.
LAUNCHER = """
import os, subprocess, sys, time
from step_launch.processes import ChildProcesses, watchdog, new_marker, MARKER_ENV
pid_file = sys.argv[1]
marker = new_marker()
grandchild = (
    "import os, subprocess, sys\\n"
    "env = {k: v for k, v in os.environ.items() if k != %r}\\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], env=env)\\n"
    "open(%r, 'w').write(str(p.pid))\\n"
    "p.wait()\\n"
) % (MARKER_ENV, pid_file)
with watchdog(marker), ChildProcesses(marker) as procs:
    env = {**os.environ, MARKER_ENV: marker}
    procs.spawn([sys.executable, "-c", grandchild], env, subprocess.DEVNULL, subprocess.DEVNULL)
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the watchdog reads /proc")
def test_watchdog_kills_unmarked_processes_of_a_marked_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    repo = Path(__file__).resolve().parents[2]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(pid_file)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    grandchild = 0
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        grandchild = int(pid_file.read_text())
        assert _alive(grandchild)
        environ = Path(f"/proc/{grandchild}/environ").read_bytes()
        assert b"STEP_LAUNCH_MARKER" not in environ
    finally:
        launcher.kill()  # no `finally` runs in the launcher: only the watchdog can sweep
        launcher.wait()
    try:
        deadline = time.monotonic() + 15
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(grandchild), "the watchdog left the unmarked grandchild running"
    finally:
        if grandchild and _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
