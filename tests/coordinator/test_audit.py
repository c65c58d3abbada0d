"""The audit log verifies when honest and names the line of every kind of tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner

from coordinator.audit import AuditLog, _digest
from coordinator.cli import app as coord

KEY = ed25519.Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path)
    for i in range(n):
        log.append(KEY, "enroll", {"node": f"inst{i}", "note": "Ελληνικά"})
    return log


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_an_honest_log_verifies(tmp_path: Path) -> None:
    log = _log(tmp_path)
    assert log.verify(PUB) == []
    assert [e["seq"] for e in log.entries()] == [1, 2, 3, 4, 5]


def test_an_edited_line_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.lines()
    lines[2] = lines[2].replace("inst2", "mallory")
    _rewrite(log, lines)
    assert log.verify(PUB)[0].startswith("line 3: edited")


def test_a_deleted_line_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.lines()
    del lines[1]
    _rewrite(log, lines)
    assert log.verify(PUB)[0].startswith("line 2: carries sequence number 3")


def test_reordered_lines_are_named(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.lines()
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(log, lines)
    assert log.verify(PUB)[0].startswith("line 2:")


def test_a_cut_tail_is_found(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _rewrite(log, log.lines()[:3])
    problems = log.verify(PUB)
    assert problems == [
        "the log ends at line 3 but was last written with 5 lines: lines 4-5 were cut from its end"
    ]


def test_a_rehashed_edit_without_the_key_is_a_forgery(tmp_path: Path) -> None:
    """Recomputing the hash chain after an edit is not enough: each hash is signed."""
    log = _log(tmp_path, 3)
    entries = [json.loads(line) for line in log.lines()]
    entries[2]["details"]["node"] = "mallory"
    body = {k: entries[2][k] for k in ("seq", "time", "action", "details", "prev")}
    entries[2]["hash"] = _digest(body)
    _rewrite(log, [json.dumps(e) for e in entries])
    problems = log.verify(PUB)
    assert "line 3: its signature is not the federation key's (forged)" in problems


def test_another_key_does_not_verify(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    assert log.verify(other)[0].startswith("line 1: its signature")


@pytest.mark.parametrize("tamper", ["edit", "none"])
def test_cli_audit_verify(tmp_path: Path, tamper: str) -> None:
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(coord, ["init", str(fed)]).exit_code == 0
    pub = tmp_path / "fed" / "tls" / "federation.pub"
    if tamper == "edit":
        path = fed / "audit.jsonl"
        path.write_text(path.read_text().replace('"preset": "debug"', '"preset": "7b"'))
    result = runner.invoke(coord, ["audit", "--verify", "--json", "--dir", str(fed)])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if tamper == "edit":
        assert result.exit_code == 1
        assert "line 1: edited" in result.stderr
        assert report["verified"] is False
    else:
        assert result.exit_code == 0, result.output
        assert report["verified"] is True and report["entries"][0]["action"] == "init"
        assert pub.read_text().startswith("ssh-ed25519 ")
