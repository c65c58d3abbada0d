"""Running the node's Flower SuperNode: TLS to the coordinator, the node's key for
authentication, node.yaml for the ClientApp, and reconnection with backoff.

Flower's SuperNode retries by itself while the coordinator is unreachable and reconnects after
a coordinator restart. When it exits anyway, this loop tells apart the refusals that retrying
cannot fix (a key the coordinator does not accept, a coordinator certificate the CA does not
vouch for), which end ``step-node start`` with a message saying what to do, from everything
else, after which it starts the SuperNode again with exponential backoff.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from node.keys import PUBLIC_KEY
from node.node_config import NODE_CONFIG_KEY, NodeFile
from step_model.errors import StepError
from step_model.flwr_cli import flower_env, strip_ansi
from step_model.identity import fingerprint, read_public_key
from step_model.processes import ChildProcesses, free_port, new_marker, watchdog

FIRST_BACKOFF_S = 1.0
DRAIN_S = 1.0  # output still read after the SuperNode exits
KEY_GRACE_S = 15.0
"""How long a refused key is retried before the refusal is final: a coordinator that has just
started opens its node port a moment before it has registered the enrolled keys."""


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


def _argv(nf: NodeFile, port: int) -> list[str]:
    exe = Path(sys.executable).parent / "flower-supernode"
    return [
        str(exe),
        "--superlink", nf.coordinator,
        "--root-certificates", str(nf.ca),
        "--auth-supernode-private-key", str(nf.private_key),
        "--node-config", f'{NODE_CONFIG_KEY}="{nf.path}"',
        "--port", str(port),  # the local ClientApp API: loopback, free port
    ]  # fmt: skip


def run_node(nf: NodeFile, say: Callable[[str], None]) -> None:
    """Run the SuperNode until Ctrl-C (KeyboardInterrupt) or a refusal (NodeRefused)."""
    for path, what in ((nf.ca, "the CA certificate"), (nf.private_key, "the node's key")):
        if not path.is_file():
            raise StepError(f"{path} ({what}) is missing: run `step-node init` or restore it")
    log_path = nf.folder / "logs" / "supernode.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    marker, backoff = new_marker(), FIRST_BACKOFF_S
    first_refused: float | None = None
    with watchdog(marker), ChildProcesses(marker) as procs:
        while True:
            say(f"connecting to {nf.coordinator} (TLS, node key) as {nf.name}")
            began = time.monotonic()
            proc = procs.spawn(
                _argv(nf, free_port()),
                flower_env(nf.folder / "flwr_home", marker),
                subprocess.PIPE,
                subprocess.STDOUT,
            )
            refusal = _watch(proc, nf, log_path, say)
            procs.terminate_all()  # the SuperNode's SuperExec may outlive it
            if refusal is not None:
                first_refused = first_refused or time.monotonic()
                if time.monotonic() - first_refused >= refusal.retry_s:
                    raise NodeRefused(refusal.message)
                say("the coordinator refused this node's key; retrying for a few seconds in "
                    "case it is still registering the enrolled nodes")  # fmt: skip
            else:
                first_refused = None
            if time.monotonic() - began > 60:
                backoff = FIRST_BACKOFF_S  # it ran a while: a new outage, not the same one
            say(f"the SuperNode stopped (exit code {proc.returncode}); retrying in {backoff:.0f} s")
            time.sleep(backoff)
            backoff = min(backoff * 2, nf.max_backoff_s)


def _watch(
    proc: subprocess.Popen[bytes], nf: NodeFile, log_path: Path, say: Callable[[str], None]
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
            if "SuperNode ID:" in line:
                node_id = line.split("SuperNode ID:")[1].strip()
                say(f"connected to the coordinator: node id {node_id}")
            elif line.startswith(("ERROR", "WARNING")) and "Exit Code" not in line:
                say(line)
    return found


def _pump(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for raw in stream:
        lines.put(raw)
