"""Keys, fingerprints, the federation CA and the registry."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from coordinator.registry import Registry
from coordinator.tls import certificate_hosts, create_tls
from node.keys import create_key_pair
from step_common.errors import StepError
from step_common.signatures import fingerprint
from step_fed.identity import parse_public_key

# A P-384 key and the fingerprint `ssh-keygen -lf` printed for it.
KEY = (
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBFCCRwWSLKSpLaR4"
    "kpmhs0n4/k9cBEtpCqwS/waQO++rK0mQbiflnBPOcnrwEYyPPHFsz/o05rrLjyVn+RhA93Nu/AJZaROMxD19x/B8"
    "4+0wYOdNbnqDBPJ+LFtSm2bbQg== n1"
)
KEY_FP = "SHA256:lrALZhatyq1jhbVsvD6YbYLLyQpSYxfwe3F5orWp8HI"
RSA = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDutPUxpna/w3D6qfzA0z8QVfBffwVI7inLg4NQnUDFcQAzcIk3tl"
    "CmG+GYnDZOhTqd+JUm+uS7hRLbXLho6wJ/2lX0yd/M5cyPpGOAJtE9+YZ2OOhOl9XZYvneQ9TETljgXt9ti9QTslP4"
    "WVdVULFN6zChu/xnSlJzLfOKsaQfHw== root@vm"
)


def test_fingerprint_matches_ssh_keygen() -> None:
    assert fingerprint(parse_public_key(KEY, "k")) == KEY_FP


@pytest.mark.parametrize(
    ("text", "why"),
    [(RSA, "not an ECDSA P-384 key"), ("hello", "not an OpenSSH public key"), ("", "OpenSSH")],
)
def test_wrong_keys_are_refused(text: str, why: str) -> None:
    with pytest.raises(StepError, match=why):
        parse_public_key(text, "node.pub")


def test_key_pair_is_private_and_loadable(tmp_path: Path) -> None:
    line = create_key_pair(tmp_path, "uni-a")
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
    assert parse_public_key((tmp_path / "node.pub").read_text(), "pub") == line.rsplit(" ", 1)[0]
    assert b"OPENSSH PRIVATE KEY" in (tmp_path / "node.key").read_bytes()


def test_server_certificate_chains_to_the_ca(tmp_path: Path) -> None:
    tls = create_tls(tmp_path, "eu", ["coord.example.eu", "10.0.0.7"])
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    hosts = certificate_hosts(tls.server_cert)
    assert {"coord.example.eu", "localhost", "10.0.0.7", "127.0.0.1"} <= set(hosts)
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises when the signature does not hold
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))  # a CA OpenSSL accepts
    assert ctx.cert_store_stats()["x509_ca"] == 1
    other = create_tls(tmp_path / "other", "x", [])
    with pytest.raises(ValueError):
        server.verify_directly_issued_by(x509.load_pem_x509_certificate(other.ca_cert.read_bytes()))


def test_bad_host_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="neither an IP address nor a host name"):
        create_tls(tmp_path, "eu", ["http://coord:9092"])
    assert not (tmp_path / "ca.key").exists()


def test_registry_enroll_revoke_and_conflicts(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    key = parse_public_key(KEY, "k")
    entry = reg.enroll("uni-a", key)
    assert entry.fingerprint == KEY_FP and entry.active
    assert reg.enroll("uni-a", key) is entry  # enrolling twice is harmless
    with pytest.raises(StepError, match="already enrolled as 'uni-a'"):
        reg.enroll("uni-b", key)
    other = tmp_path / "o"
    other.mkdir()
    with pytest.raises(StepError, match="already enrolled with another key"):
        reg.enroll("uni-a", create_key_pair(other, "x").rsplit(" ", 1)[0])
    with pytest.raises(StepError, match="not allowed"):
        reg.enroll("../etc", key)
    reg.revoke("uni-a")
    again = Registry(tmp_path)  # persisted
    assert not again.get("uni-a").active
    with pytest.raises(StepError, match="no node named 'nobody'"):
        again.revoke("nobody")
    assert [e["status"] for e in again.as_json()] == ["revoked"]


def test_corrupted_registry_is_reported(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(StepError, match="cannot be read"):
        Registry(tmp_path)
