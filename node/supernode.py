"""Running the node's Flower SuperNode: TLS to the coordinator, the node's key for
authentication, node.yaml for the ClientApp, and reconnection with backoff.

Flower's SuperNode retries by itself while the coordinator is unreachable and reconnects after
a coordinator restart. When it exits anyway, this loop tells apart the refusals that retrying
cannot fix (a key the coordinator does not accept, a coordinator certificate the CA does not
vouch for), which end ``step-node start`` with a message saying what to do, from everything
else, after which it starts the SuperNode again with exponential backoff.

The SuperNode runs with the federation's public signing key as its only trusted entity
(``--trusted-entities``): Flower verifies each run's app (FAB) against it before running any of
its code and answers an unsigned or foreign-signed app with an error. Each refusal is said on
the console and kept in ``logs/refused-apps.jsonl`` for ``step-node status``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from node.keys import PUBLIC_KEY
from node.node_config import CONSOLE_PREFIX, NODE_CONFIG_KEY, NodeFile
from step_common.errors import StepError
from step_common.fileio import append_jsonl, atomic_write_json, atomic_write_text
from step_common.signatures import fingerprint, key_fingerprint, read_verify_key
from step_fed.app_signatures import trusted_entities_yaml
from step_fed.identity import read_public_key
from step_launch.flwr_cli import flower_env, strip_ansi
from step_launch.processes import ChildProcesses, free_port, new_marker, pid_alive, watchdog

FIRST_BACKOFF_S = 1.0
DRAIN_S = 1.0  # output still read after the SuperNode exits
FEDERATION_KEY = "federation.pub"
TRUSTED = "trusted-entities.yaml"
REFUSED = "refused-apps.jsonl"
STATUS = "node.json"
APP_REFUSALS = ("FAB verification failed", "The FAB could not be verified")
"""What flwr 1.39's SuperNode logs when an app fails the signature check (no signature from a
trusted key; no signature at all)."""
_RUN_RE = re.compile(r"\[RUN (\d+)")
_DIGITS = re.compile(r"\d+(\.\d+)?")
QUIET_S = 60.0
REFUSAL_RETRY_S = 5.0
KEY_GRACE_S = 75.0
WORKER_RESTARTS = 100
"""How long a refused activation is retried before it counts as a refused key. The SuperLink
answers "Failed to activate SuperNode" both to a key it does not know and to a node whose
previous session it still holds: after a crash that session stays open until its heartbeats are
missed (flwr 1.39: 2 x 30 s). A coordinator that has just started also opens its node port a
moment before it has registered the enrolled keys."""


class NodeRefused(StepError):
    """The coordinator, or this node's own TLS check, refused the connection."""

    exit_code = 3


@dataclass(frozen=True)
class Refusal:
    needle: str
    message: str
    retry_s: float = 0.0
    """Retry for this long after the first such refusal before giving up."""


def refusals(nf: NodeFile) -> list[Refusal]:
    return [
        Refusal(
            "Failed to activate SuperNode",
            f"the coordinator at {nf.coordinator} refused this node's key "
            f"({_key_hint(nf)}): it is not enrolled, or it was revoked. Send node.pub to "
            "the coordinator admin (`step-coord enroll`), then start again",
            KEY_GRACE_S,
        ),
        Refusal(
            "CERTIFICATE_VERIFY_FAILED",
            f"the coordinator at {nf.coordinator} presented a certificate that {nf.ca} does not "
            "vouch for: get the federation's ca.crt from the coordinator admin (or check that "
            "the address is the coordinator's and not another server)",
        ),
        Refusal(
            "SSL/TLS handshake error",
            f"the TLS handshake with the coordinator at {nf.coordinator} failed: it presented a "
            f"certificate that {nf.ca} does not vouch for (a CA of another federation, even one "
            "with the same name, or another server at that address): get the federation's "
            "ca.crt from the coordinator admin",
        ),
        Refusal(
            "Invalid node ID",
            f"the coordinator at {nf.coordinator} no longer accepts this node's key (revoked): "
            "ask the coordinator admin",
        ),
    ]


def _key_hint(nf: NodeFile) -> str:
    try:
        return fingerprint(read_public_key(nf.folder / PUBLIC_KEY))
    except StepError:
        return PUBLIC_KEY


def trusted_entities(nf: NodeFile) -> Path:
    """Write the SuperNode's trusted-entities file from the federation key in node.yaml."""
    if nf.federation_key is None:
        raise StepError(
            f"{nf.path} names no federation_key: get federation.pub from the coordinator admin, "
            f"put it in {nf.folder} and add `federation_key: {FEDERATION_KEY}` to node.yaml "
            "(nodes run only apps signed with it)"
        )
    key = read_verify_key(nf.federation_key)
    path = nf.folder / TRUSTED
    atomic_write_text(path, trusted_entities_yaml(key))
    return path


def _argv(nf: NodeFile, port: int, trusted: Path) -> list[str]:
    exe = Path(sys.executable).parent / "flower-supernode"
    return [
        str(exe),
        "--superlink", nf.coordinator,
        "--root-certificates", str(nf.ca),
        "--auth-supernode-private-key", str(nf.private_key),
        "--trusted-entities", str(trusted),
        "--node-config", f'{NODE_CONFIG_KEY}="{nf.path}"',
        "--port", str(port),  # the local ClientApp API: loopback, free port
    ]  # fmt: skip


def worker_argv(nf: NodeFile, simulated: bool = False) -> list[str]:
    """The node's torchrun workers on this host (``resources.gpus`` of them): torchrun restarts
    the whole group when one dies (its own elastic agent, up to ``WORKER_RESTARTS`` times;
    node/worker_agent.py says why it is not plain ``torch.distributed.run``).
    Several hosts meet at the node's c10d rendezvous: the same command on each of them."""
    settings = nf.settings
    if settings.hosts > 1:
        meet = [f"--nnodes={settings.hosts}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={settings.rendezvous}",
                f"--rdzv-id=step-{settings.name}"]  # fmt: skip
    else:
        meet = ["--standalone"]
    return [
        sys.executable, "-m", "node.worker_agent", *meet,
        f"--nproc-per-node={settings.workers // settings.hosts}",
        f"--max-restarts={WORKER_RESTARTS}",
        "-m", "node.worker_group", str(nf.path), *(["--simulated"] if simulated else []),
    ]  # fmt: skip


def run_workers(nf: NodeFile, say: Callable[[str], None]) -> int:
    """This host's share of a node's workers that span several hosts (`step-node workers` on
    each host but the one running `step-node start`), in the foreground until they end or
    Ctrl-C; torchrun's exit code."""
    settings = nf.settings
    if settings.hosts == 1:
        raise StepError(
            f"{nf.path}: resources.hosts is 1: `step-node start` starts this node's workers; "
            "`step-node workers` runs on the other hosts of a node with hosts > 1"
        )
    marker = new_marker()
    here = settings.workers // settings.hosts
    say(f"joining {nf.name}'s workers at {settings.rendezvous}: {here} of {settings.workers} "
        f"workers on this host, {settings.hosts} hosts in all")  # fmt: skip
    with watchdog(marker), ChildProcesses(marker) as workers:
        proc = workers.spawn(worker_argv(nf), flower_env(nf.folder / "flwr_home", marker),
                             sys.stdout.buffer, subprocess.STDOUT)  # fmt: skip
        return proc.wait()


def run_node(nf: NodeFile, say: Callable[[str], None]) -> None:
    """Run the SuperNode until Ctrl-C (KeyboardInterrupt) or a refusal (NodeRefused)."""
    for path, what in ((nf.ca, "the CA certificate"), (nf.private_key, "the node's key")):
        if not path.is_file():
            raise StepError(f"{path} ({what}) is missing: run `step-node init` or restore it")
    trusted = trusted_entities(nf)
    log_path = nf.folder / "logs" / "supernode.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    marker = new_marker()
    _set_status(nf, "connecting")
    try:
        with watchdog(marker), ChildProcesses(marker) as workers, ChildProcesses(marker) as procs:
            if nf.settings.workers > 1:
                with (nf.folder / "logs" / "workers.log").open("ab") as log:
                    workers.spawn(worker_argv(nf), flower_env(nf.folder / "flwr_home", marker),
                                  log, subprocess.STDOUT)  # fmt: skip
                say(f"started {nf.settings.workers} torchrun workers (log: logs/workers.log)")
            backoff, quiet = _Backoff(nf), Quiet()
            while True:
                say(f"connecting to {nf.coordinator} (TLS, node key) as {nf.name}")
                began = time.monotonic()
                proc = procs.spawn(
                    _argv(nf, free_port(), trusted),
                    flower_env(nf.folder / "flwr_home", marker),
                    subprocess.PIPE,
                    subprocess.STDOUT,
                )
                refusal = _watch(proc, nf, log_path, say, quiet)
                procs.terminate_all()  # the SuperNode's SuperExec may outlive it
                _set_status(nf, "reconnecting")
                backoff.after(refusal, time.monotonic() - began, proc.returncode,
                              lambda line: quiet.say(line, say))  # fmt: skip
    finally:
        _set_status(nf, "stopped")


class _Backoff:
    """Exponential backoff between SuperNode restarts; a refusal of the key is final after its
    grace time."""

    def __init__(self, nf: NodeFile) -> None:
        self.nf, self.wait_s = nf, FIRST_BACKOFF_S
        self.first_refused: float | None = None

    def after(
        self, refusal: Refusal | None, ran_s: float, code: int | None, say: Callable[[str], None]
    ) -> None:
        if refusal is not None:
            self.first_refused = self.first_refused or time.monotonic()
            if time.monotonic() - self.first_refused >= refusal.retry_s:
                raise NodeRefused(refusal.message)
            say("the coordinator did not let this node in: it may still hold this node's "
                "previous session (a crashed node's session ends within a minute) or be "
                f"registering the enrolled keys; retrying for up to {refusal.retry_s:.0f} s "
                "before concluding that the key is not enrolled")  # fmt: skip
        else:
            self.first_refused = None
        if ran_s > 60:
            self.wait_s = FIRST_BACKOFF_S  # it ran a while: a new outage, not the same one
        # While a refusal's grace runs, retry every few seconds: the answer is due at its end.
        wait = min(self.wait_s, REFUSAL_RETRY_S) if self.first_refused else self.wait_s
        say(f"the SuperNode stopped (exit code {code}); retrying in {wait:.0f} s")
        time.sleep(wait)
        self.wait_s = min(self.wait_s * 2, self.nf.max_backoff_s)


def _watch(
    proc: subprocess.Popen[bytes],
    nf: NodeFile,
    log_path: Path,
    say: Callable[[str], None],
    quiet: Quiet,
) -> Refusal | None:
    """Copy the SuperNode's output to the log until it exits; the refusal, if any.

    The SuperNode's own children (SuperExec) inherit its stdout and may outlive it, so the end
    of the SuperNode is its exit, not the end of the pipe.
    """
    lines: queue.Queue[bytes] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    found: Refusal | None = None
    exited_at: float | None = None
    run_id = ""
    with log_path.open("ab") as log:
        while exited_at is None or time.monotonic() - exited_at < DRAIN_S:
            if exited_at is None and proc.poll() is not None:
                exited_at = time.monotonic()
            try:
                raw = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            log.write(raw)
            log.flush()
            line = strip_ansi(raw.decode("utf-8", errors="replace")).rstrip()
            for r in refusals(nf):
                if r.needle in line and found is None:
                    found = r
            if run := _RUN_RE.search(line):
                run_id = run.group(1)
            _describe(nf, line, run_id, say, quiet)
    return found


class Quiet:
    """Repeated warnings (a SuperNode retrying an unreachable coordinator says the same thing
    every few seconds) reach the console at most once per ``every_s``, with a count of those
    held back; the log keeps them all."""

    def __init__(self, every_s: float = QUIET_S) -> None:
        self.every_s = every_s
        self.last: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def say(self, line: str, say: Callable[[str], None]) -> None:
        key = _DIGITS.sub("#", line)  # "retrying in 3.2 s" and "in 7.9 s" are one warning
        now = time.monotonic()
        if now - self.last.get(key, -self.every_s) < self.every_s:
            self.held[key] = self.held.get(key, 0) + 1
            return
        held = self.held.pop(key, 0)
        self.last[key] = now
        say(line if not held else f"{line} (and {held} more like it in logs/supernode.log)")


def _describe(
    nf: NodeFile, line: str, run_id: str, say: Callable[[str], None], quiet: Quiet
) -> None:
    """Say what the operator should see of one SuperNode log line."""
    if "SuperNode ID:" in line:
        node_id = line.split("SuperNode ID:")[1].strip()
        _set_status(nf, "connected", node_id=node_id)
        say(f"connected to the coordinator: node id {node_id}")
    elif any(needle in line for needle in APP_REFUSALS):
        reason = line.split(":", 1)[-1].strip() if ":" in line else line
        append_jsonl(nf.folder / "logs" / REFUSED,
                     {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "run_id": run_id,
                      "reason": reason})  # fmt: skip
        say(f"REFUSED the app of run {run_id or '?'}: it is not signed with the federation key "
            f"{_federation_hint(nf)}; none of its code ran")  # fmt: skip
    elif line.startswith(CONSOLE_PREFIX):  # the ClientApp's line per round
        say(line.removeprefix(CONSOLE_PREFIX))
    elif line.startswith(("ERROR", "WARNING")) and "Exit Code" not in line:
        quiet.say(line, say)


def _federation_hint(nf: NodeFile) -> str:
    try:
        return key_fingerprint(read_verify_key(nf.federation_key or nf.folder / FEDERATION_KEY))
    except StepError:
        return FEDERATION_KEY


def _set_status(nf: NodeFile, state: str, **extra: Any) -> None:
    status = {"pid": os.getpid(), "state": state, "since": time.time(), **extra}
    atomic_write_json(nf.folder / "logs" / STATUS, status)


def node_status(nf: NodeFile) -> dict[str, Any]:
    """What ``step-node status`` shows: running or not, keys, refused apps."""
    logs = nf.folder / "logs"
    try:
        status = json.loads((logs / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {"state": "never started"}
    if status.get("state") not in ("stopped", "never started") and not pid_alive(status.get("pid")):
        status["state"] = "not running (it was killed)"
    refused = []
    try:
        for line in (logs / REFUSED).read_text(encoding="utf-8").splitlines():
            refused.append(json.loads(line))
    except (OSError, ValueError):
        pass
    return {
        "name": nf.name,
        "coordinator": nf.coordinator,
        "state": status.get("state"),
        "node_id": status.get("node_id"),
        "node_key": _key_hint(nf),
        "federation_key": _federation_hint(nf),
        "refused_apps": refused,
        "log": str(logs / "supernode.log"),
    }


def _pump(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for raw in stream:
        lines.put(raw)
