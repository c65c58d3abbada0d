"""The Flower App that ``step-coord start`` submits, signed with the federation key.

Every node runs its SuperNode with the federation's public key as its only trusted entity
(``flower-supernode --trusted-entities``), so Flower refuses, on the node and before any of its
code runs, every app whose FAB carries no valid signature by that key.

Flower 1.39 accepts signatures only for apps fetched from the Flower Hub: ``StartRun`` drops the
verifications of a FAB submitted from disk (``control_handlers.start_run``). step-coord
therefore builds the FAB exactly as ``flwr run`` does (the build is deterministic), submits it,
and writes the signature into the SuperLink's own database row of that FAB, which is where the
Fleet API reads it from when a node asks for the app. A node asks only when the ServerApp first
sends it a message, seconds after the submission; one that asked earlier would refuse the app
(fail-safe) and ask again with the next message. The guard (guard.py) re-applies the signature
if another submission of the same bytes overwrote it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.cli.build import build_fab_from_disk

from step_common.errors import StepError
from step_fed.app_signatures import fab_verifications


class SignedApp:
    """A built FAB and its signature."""

    def __init__(self, app_dir: Path, key: ed25519.Ed25519PrivateKey) -> None:
        self.fab = build_fab_from_disk(app_dir)
        self.hash = hashlib.sha256(self.fab).hexdigest()
        self.verifications = fab_verifications(key, self.fab)

    def check_submitted(self, reported_hash: str) -> None:
        """``flwr run`` reports (a prefix of) the hash of the FAB it built and sent."""
        if not reported_hash or not self.hash.startswith(reported_hash):
            raise StepError(
                f"the app flwr submitted (hash {reported_hash!r}) is not the one step-coord "
                f"signed ({self.hash[:8]}): the flwr and step-federated installs differ; "
                "reinstall step-federated"
            )

    def store_signature(self, database: Path) -> bool:
        """Write the signature into the SuperLink's row of this FAB; False when it was already
        there. StepError when the SuperLink does not hold this FAB."""
        wanted = json.dumps(self.verifications)
        with closing(sqlite3.connect(database, timeout=30)) as db, db:
            row = db.execute("SELECT verifications FROM fab WHERE fab_hash = ?", (self.hash,))
            found = row.fetchone()
            if found is None:
                raise StepError(
                    f"the SuperLink's database {database} holds no app with hash "
                    f"{self.hash[:8]}: the submission did not arrive; start again"
                )
            if _signed_by_us(str(found[0]), self.verifications):
                return False
            db.execute("UPDATE fab SET verifications = ? WHERE fab_hash = ?", (wanted, self.hash))
        return True


def _signed_by_us(stored: str, ours: dict[str, str]) -> bool:
    try:
        current = json.loads(stored)
    except ValueError:
        return False
    return isinstance(current, dict) and all(current.get(k) == v for k, v in ours.items())
