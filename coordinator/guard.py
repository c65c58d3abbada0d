"""Undo what step-coord did not do through Flower's Control API.

The open-source Flower 1.39 SuperLink has no way to authenticate Control API callers (account
authentication is in Flower's enterprise edition only; TLS there has no client certificates and
the port cannot be a Unix socket), so any process on the coordinator's host that can reach its
loopback port can register node keys, submit runs and stop them. While ``step-coord start``
runs, this guard checks the SuperLink every few seconds and:

- unregisters every node id that no active registry entry holds (a key registered behind the
  admin's back), with an alert in the audit log;
- stops every run other than its own (an app submitted behind the admin's back: its ClientApp
  is refused by the nodes anyway, since it is not signed with the federation key), with an alert;
- re-applies the signature of its own app if another submission of the same bytes wiped it.

- records a stop of its own run that it did not issue (``outcome``): ``step-coord start`` then
  ends with state ``interrupted``, and ``--resume`` continues from the last committed round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from coordinator.app_signing import SignedApp
from coordinator.audit import AuditLog
from coordinator.control_client import ControlClient, RunInfo
from coordinator.deployment import FederationFolder
from coordinator.registry import Registry
from step_common.fileio import file_lock

Say = Callable[[str], None]


class ControlGuard:
    def __init__(
        self,
        fed: FederationFolder,
        control: ControlClient,
        key: ed25519.Ed25519PrivateKey,
        say: Say,
    ) -> None:
        self.fed, self.control, self.key, self.say = fed, control, key, say
        self.audit = AuditLog(fed.root)
        self.run_id: int | None = None
        self.app: SignedApp | None = None
        self.stopped: set[int] = set()

    def alert(self, text: str, **details: Any) -> None:
        self.say(f"ALERT: {text}")
        self.audit.append(self.key, "alert", {"alert": text, **details})

    def foreign_nodes(self) -> None:
        """Unregister node ids that no active registry entry holds."""
        with file_lock(self.fed.control_lock):
            registry = Registry(self.fed.root)
            ours = {e.node_id for e in registry.nodes.values() if e.active and e.node_id}
            for node in self.control.nodes():
                if node.node_id in ours or node.status == "unregistered":
                    continue
                self.control.unregister(node.node_id)
                self.alert(
                    f"node id {node.node_id} was registered through the Control API, not by "
                    "step-coord enroll: unregistered",
                    node_id=node.node_id,
                    status=node.status,
                )

    def foreign_runs(self, runs: list[RunInfo]) -> None:
        """Stop every unfinished run that is not this coordinator's."""
        for run in runs:
            if run.run_id in (self.run_id, *self.stopped) or run.status.startswith("finished"):
                continue
            self.control.stop(run.run_id)
            self.stopped.add(run.run_id)
            self.alert(
                f"run {run.run_id} ({run.fab_id}) was submitted through the Control API, not "
                "by step-coord: stopped",
                run_id=run.run_id,
                fab_id=run.fab_id,
                fab_hash=run.fab_hash,
            )

    def keep_signed(self) -> None:
        if self.app is not None and self.app.store_signature(self.fed.database):
            self.alert("the signature of this federation's app had been removed: re-applied")

    def outcome(self, status: str, details: str) -> tuple[str, str]:
        """(state, details) of this coordinator's finished run, as ``flwr ls`` reported it."""
        if status == "finished:completed":
            return "completed", details or status
        if status == "finished:stopped":  # step-coord's own stop ends the SuperLink instead
            self.alert(
                f"run {self.run_id} was stopped through the Control API, not by step-coord",
                run_id=self.run_id,
            )
            return "interrupted", (
                "stopped through Flower's Control API by someone other than step-coord "
                "(recorded in the audit log); `step-coord start --resume` continues from the "
                "last committed round"
            )
        return "failed", details or status

    def check(self) -> list[RunInfo]:
        """One sweep; returns the runs listed (the caller reads its own run's status there)."""
        runs = self.control.runs()
        self.foreign_runs(runs)
        self.foreign_nodes()
        self.keep_signed()
        return runs
