"""The node's key pair: ECDSA P-384 in OpenSSH format, as Flower's SuperNode authentication
expects (``--auth-supernode-private-key``). The private key never leaves the node's folder and
is written with 0600 permissions; the public key goes to the coordinator admin."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from step_common.fileio import atomic_write_bytes
from step_fed.identity import NodeSigner

PRIVATE_KEY = "node.key"
PUBLIC_KEY = "node.pub"


def create_key_pair(folder: Path, comment: str) -> str:
    """Write ``node.key`` (0600) and ``node.pub`` into ``folder``; return the public key line."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write_bytes(folder / PRIVATE_KEY, private, mode=0o600)
    line = public.decode("ascii") + f" {comment}"
    atomic_write_bytes(folder / PUBLIC_KEY, (line + "\n").encode("ascii"))
    return line


def node_signer(key: Path | None) -> NodeSigner | None:
    """The node's signer where it has a key (a deployed node); None in a simulation."""
    return NodeSigner(key) if key is not None else None
