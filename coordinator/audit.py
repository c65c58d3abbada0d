"""The federation's tamper-evident audit log: ``<fed>/audit.jsonl``.

Every admin action (init, enroll, revoke, start, resume, stop), every committed round and every
alert (something done to the federation that step-coord did not do) is one JSON line::

    {"seq": 7, "time": 1767225600.123, "action": "round", "details": {...},
     "prev": "<hash of line 6>", "hash": "<sha256 of this line's body>", "sig": "<Ed25519>"}

``hash`` is the sha256 of the canonical JSON of seq, time, action, details and prev, so each
line is chained to the one before; ``sig`` signs ``hash`` with the federation key, so nobody
without that key can rewrite the chain after an edit. ``audit.head`` holds the signed count and
last hash, so lines cut from the end show too. Appends from concurrent step-coord processes
(``enroll`` while ``start`` runs) are serialised by a file lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from step_common.errors import StepError
from step_common.fileio import atomic_write_json, file_lock
from step_common.signatures import sign, verify

AUDIT = "audit.jsonl"
HEAD = "audit.head"
LOCK = ".audit.lock"
GENESIS = "0" * 64
BODY = ("seq", "time", "action", "details", "prev")


class AuditBroken(StepError):
    """The audit log does not verify (exit 1: a finding, not a usage error)."""

    exit_code = 1


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _head_message(count: int, last: str) -> bytes:
    return f"{count}:{last}".encode("ascii")


class AuditLog:
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / AUDIT
        self.head = Path(root) / HEAD
        self.lock = Path(root) / LOCK

    def append(
        self, key: ed25519.Ed25519PrivateKey, action: str, details: dict[str, Any]
    ) -> dict[str, Any]:
        """Append one signed, chained entry; return it."""
        with file_lock(self.lock):
            lines = self.lines()
            prev = str(json.loads(lines[-1])["hash"]) if lines else GENESIS
            seq = len(lines) + 1
            body = {"seq": seq, "time": round(time.time(), 3), "action": action,
                    "details": details, "prev": prev}  # fmt: skip
            digest = _digest(body)
            entry = {**body, "hash": digest, "sig": sign(key, digest.encode("ascii"))}
            line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))  # one write: a line is whole or absent
                os.fsync(fd)
            finally:
                os.close(fd)
            head_sig = sign(key, _head_message(seq, digest))
            atomic_write_json(self.head, {"count": seq, "hash": digest, "sig": head_sig})
            return entry

    def lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line.strip()]

    def entries(self) -> list[dict[str, Any]]:
        """The entries that parse (for display; ``verify`` judges them)."""
        out = []
        for line in self.lines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def verify(self, key: ed25519.Ed25519PublicKey) -> list[str]:
        """Every problem found, each naming its line (1-based); [] when the log is intact."""
        problems: list[str] = []
        prev, count = GENESIS, 0
        for n, line in enumerate(self.lines(), start=1):
            count = n
            problem, entry = _check_line(n, line, prev, key)
            if problem:
                problems.append(problem)
            prev = str(entry.get("hash", "")) if entry else ""
        problems += self._check_head(count, prev, key)
        return problems

    def _check_head(self, count: int, last: str, key: ed25519.Ed25519PublicKey) -> list[str]:
        if count == 0 and not self.head.exists():
            return []
        try:
            head = json.loads(self.head.read_text(encoding="utf-8"))
            n, h, s = int(head["count"]), str(head["hash"]), str(head["sig"])
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{self.head} is missing or unreadable: the end of the log cannot be checked"]
        if not verify(key, _head_message(n, h), s):
            return [f"{self.head} is not signed by the federation key: it was edited"]
        if n > count:
            return [f"the log ends at line {count} but was last written with {n} lines: "
                    f"lines {count + 1}-{n} were cut from its end"]  # fmt: skip
        if n < count:
            return [f"lines {n + 1}-{count} were added after the last signed write"]
        if h != last:
            return [f"line {count}: it is not the last line that was written"]
        return []


def _check_line(
    n: int, line: str, prev: str, key: ed25519.Ed25519PublicKey
) -> tuple[str | None, dict[str, Any] | None]:
    try:
        entry = json.loads(line)
        body = {k: entry[k] for k in BODY}
        digest, sig = str(entry["hash"]), str(entry["sig"])
    except (ValueError, KeyError, TypeError):
        return f"line {n}: not an audit entry (damaged or inserted)", None
    if body["seq"] != n:
        return (f"line {n}: carries sequence number {body['seq']} (lines were deleted, inserted "
                "or reordered)"), entry  # fmt: skip
    if body["prev"] != prev:
        return f"line {n}: does not follow line {n - 1} (deleted or reordered)", entry
    if _digest(body) != digest:
        return f"line {n}: edited (its content does not match its hash)", entry
    if not verify(key, digest.encode("ascii"), sig):
        return f"line {n}: its signature is not the federation key's (forged)", entry
    return None, entry
