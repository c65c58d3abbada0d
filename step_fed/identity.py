"""Node identities: ECDSA P-384 public keys in OpenSSH format, and their fingerprints.

A node proves who it is with its private key (Flower's SuperNode authentication signs every
request); the coordinator admin enrolls the public key. Both sides show the same fingerprint,
OpenSSH style (``SHA256:`` + unpadded base64 of the key blob's sha256), so an admin can compare
it with what the operator sent by another channel.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from step_common.errors import StepError
from step_common.fileio import atomic_write_bytes
from step_common.signatures import fingerprint

KEY_TYPE = "ecdsa-sha2-nistp384"


def parse_public_key(text: str, source: str) -> str:
    """The normalized OpenSSH line (type and key, no comment) of an ECDSA P-384 public key."""
    fix = "send the node.pub that `step-node init` wrote (an ecdsa-sha2-nistp384 key)"
    try:
        key = serialization.load_ssh_public_key(text.strip().encode("ascii"))
    except (ValueError, UnicodeError, IndexError, UnsupportedAlgorithm) as e:
        raise StepError(f"{source} is not an OpenSSH public key ({e}): {fix}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise StepError(f"{source} is not an ECDSA P-384 key: {fix}")
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode("ascii")


def read_public_key(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise StepError(f"{path} does not exist: give the path of the node's public key") from None
    except (OSError, UnicodeError) as e:
        raise StepError(f"{path} cannot be read as a public key ({e}): check the file") from None
    return parse_public_key(text, str(path))


class NodeSigner:
    """Signs with a node's private key (ECDSA P-384 over SHA-384): its privacy ledger and the
    epsilon it reports, so that both can be checked against the key the admin enrolled."""

    def __init__(self, private_key: Path) -> None:
        try:
            key = serialization.load_ssh_private_key(Path(private_key).read_bytes(), None)
        except (OSError, ValueError, UnsupportedAlgorithm) as e:
            raise StepError(
                f"{private_key} cannot be read as the node's key ({e}): restore node.key"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise StepError(f"{private_key} is not an ECDSA key: restore the node.key of init")
        self.key = key
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self.public_line = public.decode("ascii")
        self.fingerprint = fingerprint(self.public_line)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.key.sign(data, ec.ECDSA(hashes.SHA384()))).decode("ascii")

    def verify(self, data: bytes, signature: str) -> bool:
        return verify_node_signature(self.public_line, data, signature)


def verify_node_signature(public_line: str, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is the node key's signature of ``data``."""
    try:
        key = serialization.load_ssh_public_key(public_line.encode("ascii"))
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(base64.b64decode(signature, validate=True), data, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError, AssertionError, UnicodeError):
        return False
    return True


def write_new_key(path: Path) -> NodeSigner:
    """A new ECDSA P-384 private key written to ``path`` (OpenSSH format, 0600), as its signer
    (whose ``public_line`` is the key to enroll)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(path, private, mode=0o600)
    return NodeSigner(path)
