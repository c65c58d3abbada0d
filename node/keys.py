"""The node's key pair: ECDSA P-384 in OpenSSH format, as Flower's SuperNode authentication
expects (``--auth-supernode-private-key``). The private key never leaves the node's folder and
is written with 0600 permissions; the public key goes to the coordinator admin."""

from __future__ import annotations

from pathlib import Path

from step_common.fileio import atomic_write_bytes
from step_fed.identity import NodeSigner, write_new_key

PRIVATE_KEY = "node.key"
PUBLIC_KEY = "node.pub"


def create_key_pair(folder: Path, comment: str) -> str:
    """Write ``node.key`` (0600) and ``node.pub`` into ``folder``; return the public key line."""
    line = write_new_key(folder / PRIVATE_KEY).public_line + f" {comment}"
    atomic_write_bytes(folder / PUBLIC_KEY, (line + "\n").encode("ascii"))
    return line


def node_signer(key: Path | None) -> NodeSigner | None:
    """The node's signer where it has a key (a deployed node); None in a simulation."""
    return NodeSigner(key) if key is not None else None
