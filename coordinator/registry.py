"""The registry of institutions allowed into the federation: ``registry.json`` in the
federation folder.

An entry holds the node's public key (OpenSSH, ECDSA P-384), its fingerprint, when it was
enrolled and revoked, and the node id the SuperLink gave the key when it was registered there.
Flower's SuperLink (``--enable-supernode-auth``) accepts only registered keys; superlink.py keeps
it in step with this file. Every change is one atomic write of the whole file.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from step_common.errors import StepError
from step_common.fileio import atomic_write_json
from step_common.signatures import fingerprint

REGISTRY = "registry.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class NodeEntry:
    name: str
    public_key: str
    fingerprint: str
    enrolled_at: float
    revoked_at: float | None = None
    node_id: int | None = None
    """The SuperLink's id for this key while it is registered there (None: not registered)."""
    privacy_reset_accepted: str | None = None
    """When the admin last accepted a reset of this node's privacy ledger (privacy_reports.py)."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Registry:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / REGISTRY
        self.nodes: dict[str, NodeEntry] = self._load()

    def _load(self) -> dict[str, NodeEntry]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {name: NodeEntry(**entry) for name, entry in data["nodes"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StepError(
                f"{self.path} cannot be read ({e}): restore it from a backup, or re-enroll the "
                "nodes into a fresh registry"
            ) from None

    def save(self) -> None:
        atomic_write_json(self.path, {"nodes": {n: asdict(e) for n, e in self.nodes.items()}})

    def enroll(self, name: str, public_key: str) -> NodeEntry:
        if not _NAME_RE.match(name):
            raise StepError(
                f"node name {name!r} is not allowed: use up to 64 letters, digits, '-', '_' or "
                "'.', starting with a letter or digit"
            )
        for other in self.nodes.values():
            if other.public_key == public_key and other.name != name and other.active:
                raise StepError(
                    f"this key is already enrolled as {other.name!r}: each institution needs its "
                    "own key pair (step-node init makes one)"
                )
        old = self.nodes.get(name)
        if old is not None and old.active:
            if old.public_key == public_key:
                return old
            raise StepError(
                f"{name!r} is already enrolled with another key ({old.fingerprint}): "
                f"`step-coord revoke {name}` first to replace its key"
            )
        entry = NodeEntry(name, public_key, fingerprint(public_key), time.time())
        self.nodes[name] = entry
        self.save()
        return entry

    def revoke(self, name: str) -> NodeEntry:
        entry = self.get(name)
        if entry.active:
            entry.revoked_at = time.time()
            self.save()
        return entry

    def accept_reset(self, name: str) -> NodeEntry:
        """Let the node's next epsilon report be lower than its last (its ledger was reset)."""
        entry = self.get(name)
        entry.privacy_reset_accepted = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save()
        return entry

    def get(self, name: str) -> NodeEntry:
        if name not in self.nodes:
            known = ", ".join(sorted(self.nodes)) or "none yet"
            raise StepError(f"no node named {name!r} is enrolled (enrolled: {known})")
        return self.nodes[name]

    def name_of(self, node_id: int) -> str | None:
        """The name of the active entry registered under ``node_id`` (None: nobody enrolled,
        or revoked)."""
        for entry in self.nodes.values():
            if entry.node_id == node_id and entry.active:
                return entry.name
        return None

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {**asdict(e), "status": "enrolled" if e.active else "revoked"}
            for e in sorted(self.nodes.values(), key=lambda e: e.name)
        ]
