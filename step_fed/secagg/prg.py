"""Masks: uniform integers mod 2^b expanded from a 32-byte seed with ChaCha20.

Each seed is derived afresh per round (HKDF over the round id, ``keys.py``) and used for one
stream, so ChaCha20's fixed nonce here never meets the same key twice. The stream is read in
pieces of at most ``CHUNK`` values into one reused buffer (OpenSSL encrypts a cached block of
zeros in place: no allocation per piece), so that a model-sized mask never exists whole.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

CHUNK = 1 << 20
"""Mask values generated at a time (4 MiB)."""
_NONCE = bytes(16)  # ChaCha20's 64-bit counter and 64-bit nonce, all zero: one stream per key
_SLACK = 64  # update_into wants room for a block beyond the input


@cache
def _zeros() -> memoryview:
    return memoryview(bytes(4 * CHUNK))


class MaskStream:
    """The ChaCha20 keystream of ``seed`` as uint32 values, each taken mod 2^``bits``."""

    def __init__(self, seed: bytes, bits: int) -> None:
        if len(seed) != 32:
            raise ValueError(f"a mask seed is 32 bytes, not {len(seed)}")
        if not 1 <= bits <= 32:
            raise ValueError(f"masks are 1 to 32 bits wide, not {bits}")
        self._cipher = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
        self._out = bytearray(4 * CHUNK + _SLACK)
        self.modulus_mask = np.uint32((1 << bits) - 1)

    def take(self, n: int) -> np.ndarray:
        """(n,) uint32, n <= CHUNK: the next n values of the stream, uniform in [0, 2^bits).
        A view of this stream's buffer: valid until the next ``take``."""
        if not 0 <= n <= CHUNK:
            raise ValueError(f"at most {CHUNK} mask values at a time, not {n}")
        self._cipher.update_into(_zeros()[: 4 * n], self._out)
        values = np.frombuffer(self._out, dtype="<u4", count=n)
        values &= self.modulus_mask  # 2^bits divides 2^32: still uniform
        return values
