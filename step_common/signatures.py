"""The federation's signing key: Ed25519, OpenSSH format, and what it signs; OpenSSH key
fingerprints (the form every key of the project is shown in).

``step-coord init`` creates the key pair. The private key never leaves the coordinator's
federation folder (0600); the public key (``federation.pub``) goes to every node operator with
``ca.crt``, and its fingerprint is read out by phone, like a node's. It signs:

- the Flower App (FAB) that ``step-coord start`` submits (step_fed/app_signatures.py);
- every entry of the audit log (coordinator/audit.py);
- each checkpoint's ``SHA256SUMS`` (``SHA256SUMS.sig``), which ``step-model verify`` checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from step_common.errors import StepError
from step_common.fileio import atomic_write_bytes, atomic_write_text


def fingerprint(openssh_public: str) -> str:
    """``SHA256:...`` of an OpenSSH public key line (as ``ssh-keygen -l`` prints it)."""
    parts = openssh_public.split()
    blob = base64.b64decode(parts[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


PRIVATE_KEY = "federation.key"
PUBLIC_KEY = "federation.pub"
SIGNATURE_SUFFIX = ".sig"
KEY_TYPE = "ssh-ed25519"


def create_signing_key(folder: Path, comment: str) -> str:
    """Write ``folder/federation.key`` (0600) and ``federation.pub``; return the public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(folder / PRIVATE_KEY, private, mode=0o600)
    public = public_line(key.public_key())
    atomic_write_text(folder / PUBLIC_KEY, f"{public} {comment}\n")
    return public


def public_line(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode("ascii")


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise StepError(
            f"{path} (the federation's signing key) is missing: it was made by `step-coord "
            "init`; restore it from your backup (nodes trust only that key)"
        ) from None
    except (OSError, ValueError, UnsupportedAlgorithm) as e:
        raise StepError(f"{path} is not an OpenSSH private key ({e}): restore it") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise StepError(f"{path} is not an Ed25519 key: restore the one `step-coord init` made")
    return key


def parse_verify_key(text: str, source: str) -> ed25519.Ed25519PublicKey:
    fix = "use the federation.pub the coordinator admin sent (an ssh-ed25519 key)"
    try:
        key = serialization.load_ssh_public_key(text.strip().encode("ascii"))
    except (ValueError, UnicodeError, IndexError, UnsupportedAlgorithm) as e:
        raise StepError(f"{source} is not an OpenSSH public key ({e}): {fix}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise StepError(f"{source} is not an Ed25519 key: {fix}")
    return key


def read_verify_key(path: Path) -> ed25519.Ed25519PublicKey:
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise StepError(
            f"{path} does not exist: give the federation.pub the coordinator admin sent"
        ) from None
    except (OSError, UnicodeError) as e:
        raise StepError(f"{path} cannot be read as a public key ({e}): check the file") from None
    return parse_verify_key(text, str(path))


def key_fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    return fingerprint(public_line(key))


def sign(key: ed25519.Ed25519PrivateKey, data: bytes) -> str:
    """Unpadded base64url of the Ed25519 signature of ``data``."""
    return base64.urlsafe_b64encode(key.sign(data)).decode("ascii").rstrip("=")


def verify(key: ed25519.Ed25519PublicKey, data: bytes, signature: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        key.verify(raw, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- signed files (checkpoints' SHA256SUMS) -----------------------------------------------------


def sign_file(key: ed25519.Ed25519PrivateKey, path: Path) -> Path:
    """Write ``path.sig``: the signature of the file's bytes and the signer's fingerprint."""
    sig = Path(f"{path}{SIGNATURE_SUFFIX}")
    body = {"key": key_fingerprint(key.public_key()), "signature": sign(key, path.read_bytes())}
    atomic_write_text(sig, json.dumps(body, sort_keys=True) + "\n")
    return sig


def verify_file(key: ed25519.Ed25519PublicKey, path: Path) -> None:
    """Raise StepError unless ``path.sig`` is this key's signature of ``path``."""
    sig = Path(f"{path}{SIGNATURE_SUFFIX}")
    try:
        body = json.loads(sig.read_text(encoding="utf-8"))
        signature = str(body["signature"])
    except FileNotFoundError:
        raise StepError(
            f"{sig} is missing: this copy was not signed by the federation (or the signature "
            "was removed); get a signed copy from the coordinator admin"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StepError(f"{sig} cannot be read ({e}): get a signed copy") from None
    if not verify(key, path.read_bytes(), signature):
        raise StepError(
            f"{path} is not signed by the federation key {key_fingerprint(key)} (edited, or "
            "signed by another key): do not use it; get a signed copy from the admin"
        )
