"""Committed rounds into the audit log, and their checkpoints signed.

``step-coord start`` reads each round record as the ServerApp commits it (metrics.jsonl is
appended after the round's checkpoint is durable) and appends one ``round`` entry: who took
part (by enrolled name), who was rejected, missing or dropped, the epsilons reported, and the
sha256 of the checkpoint's ``SHA256SUMS``, which it also signs (``SHA256SUMS.sig``, checked by
``step-model verify``). The private key stays in step-coord; the ServerApp never holds it.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from coordinator.audit import AuditLog
from coordinator.deployment import FederationFolder
from step_common.fileio import sha256_file
from step_common.signatures import sign_file
from step_model.checkpoint import SUMS


class RoundAuditor:
    def __init__(self, fed: FederationFolder, key: ed25519.Ed25519PrivateKey) -> None:
        self.fed, self.key = fed, key
        self.audit = AuditLog(fed.root)
        self.done = 0
        """The last round audited; a resume from an older checkpoint (``rewind``) goes back to
        its round, so the rounds trained again are audited again."""
        for e in self.audit.entries():
            if e.get("action") == "round":
                self.done = max(self.done, int(e["details"].get("round", 0)))
            elif e.get("action") == "rewind":
                self.done = int(e["details"].get("round", 0))

    def record(self, rec: dict[str, Any]) -> None:
        """Audit a committed round record once (records of a resumed run are seen again)."""
        if rec.get("kind") != "round" or int(rec.get("round", 0)) <= self.done:
            return
        round_ = int(rec["round"])
        details: dict[str, Any] = {
            "round": round_,
            "participants": sorted(rec.get("node_wall_s") or {}),
            "rejected": sorted(rec.get("rejected") or {}),
            "missing": list(rec.get("missing") or []),
            "dropped": list(rec.get("dropped") or []),
            "epsilon": rec.get("epsilon") or {},
            **self._checkpoint(round_),
        }
        if "epsilon_central" in rec:
            details["epsilon_central"] = rec["epsilon_central"]
        self.audit.append(self.key, "round", details)
        self.done = round_

    def _checkpoint(self, round_: int) -> dict[str, Any]:
        name = f"checkpoints/round-{round_:06d}"
        sums = self.fed.run / name / SUMS
        try:
            digest = sha256_file(sums)
            sign_file(self.key, sums)
        except OSError:  # already rotated away (keep_checkpoints) before step-coord saw it
            return {"checkpoint": name, "sha256sums": None}
        return {"checkpoint": name, "sha256sums": digest}
