"""Flower App (FAB) signatures with the federation key (step_common/signatures.py).

Nodes run a SuperNode with the federation key as its only trusted entity, so Flower refuses any
app the key did not sign before running its code (Flower's own scheme: Ed25519 over 8-byte
big-endian ``signed_at`` + sha256(FAB)).
"""

from __future__ import annotations

import hashlib
import json
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from step_common.signatures import key_fingerprint, public_line, sign


def fab_verifications(key: ed25519.Ed25519PrivateKey, fab: bytes) -> dict[str, str]:
    """The ``verifications`` map a SuperNode with trusted entities checks (flwr 1.39
    ``supernode/start_client_internal.py`` ``_verify_fab``): per signer key id, a JSON string
    with the signature over 8-byte big-endian ``signed_at`` + sha256(FAB); ``valid_license``
    must be non-empty or the SuperNode refuses the app as unverifiable."""
    signed_at = int(time.time())
    message = signed_at.to_bytes(8, "big") + hashlib.sha256(fab).digest()
    entry = {"signature": sign(key, message), "signed_at": signed_at}
    return {key_fingerprint(key.public_key()): json.dumps(entry), "valid_license": "Valid"}


def trusted_entities_yaml(key: ed25519.Ed25519PublicKey) -> str:
    """``flower-supernode --trusted-entities`` file: this key, under the id the FAB's
    verification carries (its fingerprint)."""
    return f'"{key_fingerprint(key)}": "{public_line(key)}"\n'
