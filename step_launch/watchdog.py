"""The watchdog of step_launch/processes.py: run as a script (``python -I -S watchdog.py
MARKER_ENV=marker [symlink folder]``), standard library only, in its own session.

It waits until its stdin closes (the launcher finished its own cleanup, or died, even by
SIGKILL), then terminates what the launch left: processes carrying the marker in their
environment, everything in their process groups, and their descendants. Ray's agents overwrite
their environment with their process title (setproctitle), so the marker may be gone from them;
their group and parent still tie them to this launch, even once orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

Row = tuple[int, int, bool]
"""(ppid, pgid, carries the marker)"""


def table(needle: bytes) -> dict[int, Row]:
    """Every live process but this one."""
    rows = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] in ("Z", "X"):
                    continue
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                rows[int(name)] = (int(fields[1]), int(fields[3]), needle in env)
            except (OSError, IndexError, ValueError):
                pass
    return rows


def targets(needle: bytes, groups: set[int], spared: set[int]) -> set[int]:
    """Marked processes, everything in their process groups (remembered once seen, in
    ``groups``), and their descendants."""
    rows = table(needle)
    groups.update(g for _, g, marked in rows.values() if marked and g not in spared)
    found = {pid for pid, (_, g, marked) in rows.items() if marked or g in groups}
    todo = list(found)
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, _) in rows.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def sweep(needle: bytes, spared: set[int]) -> None:
    """SIGTERM first, SIGKILL from 5 s on. Done only when nothing is seen for 3 s: a process
    being forked while we look (Ray starting its agents as the raylet dies) shows up seconds
    later."""
    groups: set[int] = set()
    start = time.monotonic()
    quiet_since: float | None = None
    while time.monotonic() - start < 30.0:
        left = targets(needle, groups, spared)
        now = time.monotonic()
        if left:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= 3.0:
            return
        sig = signal.SIGTERM if now - start < 5.0 else signal.SIGKILL
        for pid in left:
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to signal
                os.kill(pid, sig)
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    needle = argv[1].encode()
    spared = {os.getpgid(0), os.getpgid(os.getppid())}  # our own group and the launcher's
    sys.stdin.buffer.read()  # returns at EOF: the launcher is done with its cleanup, or died
    sweep(needle, spared)
    if len(argv) > 2:  # the short symlink for Ray's sockets, if the launcher left it
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(argv[2], "r"))
            os.rmdir(argv[2])


if __name__ == "__main__":
    main(sys.argv)
