"""A node's key pairs for one round, signed with its identity key, and what they derive.

Each round a node draws two X25519 key pairs: one whose pairwise secrets seed the masks it
shares with each neighbour, one whose pairwise secrets key the channel (AES-GCM) through which
it sends a neighbour its Shamir shares. It signs both public keys, bound to the round id and its
name, with the node's enrolled identity key (ECDSA P-384, ``step_fed.identity``): a coordinator
that relays another key in its place is caught by every neighbour, and an advert replayed from
an earlier round does not verify for this one. Derived secrets go through HKDF-SHA256 with the
round id and both names in ``info``: a round's seeds and channel keys are never another's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from step_fed.identity import verify_node_signature

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Signer(Protocol):
    def sign(self, data: bytes) -> str: ...


@dataclass(frozen=True)
class Advert:
    """A node's public keys for one round, signed with its identity key."""

    round_id: str
    node: str
    channel_key: bytes
    """X25519 public key (32 bytes) of the channel for shares."""
    mask_key: bytes
    """X25519 public key (32 bytes) of the pairwise masks."""
    signature: str

    def signed_bytes(self) -> bytes:
        return advert_bytes(self.round_id, self.node, self.channel_key, self.mask_key)


def advert_bytes(round_id: str, node: str, channel_key: bytes, mask_key: bytes) -> bytes:
    head = f"step-secagg-v1|advert|{round_id}|{node}|".encode()
    return head + channel_key + mask_key


def verify_advert(advert: Advert, round_id: str, node: str, identity: str) -> bool:
    """Whether ``advert`` is ``node``'s for ``round_id``, signed by its enrolled ``identity``
    key (an OpenSSH public-key line)."""
    return (
        advert.round_id == round_id
        and advert.node == node
        and len(advert.channel_key) == 32
        and len(advert.mask_key) == 32
        and verify_node_signature(identity, advert.signed_bytes(), advert.signature)
    )


class RoundKeys:
    """A node's two X25519 key pairs for one round (never reused: drawn per round)."""

    def __init__(self, channel: bytes | None = None, mask: bytes | None = None) -> None:
        """Fresh keys, or (``channel``, ``mask``) the private bytes kept between a round's
        messages (``secrets``)."""
        self.channel = _private(channel)
        self.mask = _private(mask)

    def secrets(self) -> tuple[bytes, bytes]:
        """The two private keys' bytes (the node keeps them until the round ends)."""
        return _raw(self.channel), _raw(self.mask)

    def advert(self, round_id: str, node: str, signer: Signer) -> Advert:
        channel = self.channel.public_key().public_bytes(*_RAW)
        mask = self.mask.public_key().public_bytes(*_RAW)
        signature = signer.sign(advert_bytes(round_id, node, channel, mask))
        return Advert(round_id, node, channel, mask, signature)

    def mask_secret(self) -> bytes:
        """The mask key's private bytes: shared with the neighbours (Shamir) so that the
        survivors can remove this node's pairwise masks if it drops after sharing them."""
        return _raw(self.mask)


def _private(raw: bytes | None) -> X25519PrivateKey:
    return X25519PrivateKey.generate() if raw is None else X25519PrivateKey.from_private_bytes(raw)


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def pair_seed(
    private: bytes | X25519PrivateKey, public: bytes, round_id: str, a: str, b: str
) -> bytes:
    """The 32-byte seed of the mask nodes ``a`` and ``b`` share this round (either side, or the
    coordinator from a dropped node's rebuilt private key, derives the same)."""
    return _derive(private, public, f"mask|{round_id}|{min(a, b)}|{max(a, b)}")


def channel_key(private: X25519PrivateKey, public: bytes, round_id: str, a: str, b: str) -> bytes:
    return _derive(private, public, f"channel|{round_id}|{min(a, b)}|{max(a, b)}")


def _derive(private: bytes | X25519PrivateKey, public: bytes, info: str) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private) if isinstance(private, bytes) else private
    shared = key.exchange(X25519PublicKey.from_public_bytes(public))
    hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=f"step-secagg-v1|{info}".encode())
    return hkdf.derive(shared)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: a random 12-byte nonce, then the ciphertext and tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    """The plaintext, or None if ``sealed`` was not made with ``key`` and ``aad``."""
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except (InvalidTag, ValueError):
        return None
