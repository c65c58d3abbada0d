"""Masks: uniform integers mod 2^b expanded from a 32-byte seed with ChaCha20.

Each seed is derived afresh per round (HKDF over the round id, ``keys.py``) and used for one
stream, so ChaCha20's fixed nonce here never meets the same key twice. The stream is read in
pieces so that a model-sized mask never has to exist whole: ``MaskStream.take(n)`` gives the
next ``n`` values.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_NONCE = bytes(16)  # ChaCha20's 64-bit counter and 64-bit nonce, all zero: one stream per key


class MaskStream:
    """The ChaCha20 keystream of ``seed`` as uint32 values, each taken mod 2^``bits``."""

    def __init__(self, seed: bytes, bits: int) -> None:
        if len(seed) != 32:
            raise ValueError(f"a mask seed is 32 bytes, not {len(seed)}")
        if not 1 <= bits <= 32:
            raise ValueError(f"masks are 1 to 32 bits wide, not {bits}")
        self._cipher = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
        self.modulus_mask = np.uint32((1 << bits) - 1)

    def take(self, n: int) -> np.ndarray:
        """(n,) uint32: the next n values of the stream, uniform in [0, 2^bits)."""
        raw = self._cipher.update(bytes(4 * n))
        values = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
        values &= self.modulus_mask  # 2^bits divides 2^32: still uniform
        return values
