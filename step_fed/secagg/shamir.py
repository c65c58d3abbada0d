"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A node splits its self-mask seed and its mask key into shares for its neighbours; any
``threshold`` of them rebuild a secret, fewer reveal nothing about it. Hand-written (twenty
lines of field arithmetic) because no well-kept Python library provides it: ``cryptography``
has none, Flower's copy relies on pycryptodome's 16-byte GF(2^128) variant. The Mersenne prime
2^521 - 1 holds any 32-byte secret whole, so a secret is one polynomial's constant term.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

PRIME = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # one field element: 521 bits


@dataclass(frozen=True)
class Share:
    x: int
    """The holder's point, 1..n (never 0: f(0) is the secret)."""
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(2, "big") + self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != 2 + SHARE_BYTES:
            raise ValueError(f"a share is {2 + SHARE_BYTES} bytes, not {len(data)}")
        return cls(int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big"))


def split(secret: bytes, xs: list[int], threshold: int) -> list[Share]:
    """Shares of ``secret`` at the points ``xs``; any ``threshold`` of them rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, not {len(secret)}")
    if (
        not 1 <= threshold <= len(xs)
        or len(set(xs)) != len(xs)
        or not all(0 < x < 2**16 for x in xs)
    ):
        raise ValueError(f"threshold {threshold} of {len(xs)} distinct points in 1..65535")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in xs]


def combine(shares: list[Share], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    if len({s.x for s in shares}) < threshold:
        raise ValueError(f"{len(shares)} distinct shares, {threshold} needed")
    chosen = list({s.x: s for s in shares}.values())[:threshold]
    total = 0
    for i, si in enumerate(chosen):
        num, den = 1, 1
        for j, sj in enumerate(chosen):
            if i != j:
                num = num * (-sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        total = (total + si.y * num * pow(den, -1, PRIME)) % PRIME
    if total >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares do not belong to one secret")
    return total.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    y = 0
    for c in reversed(coefficients):  # Horner
        y = (y * x + c) % PRIME
    return y
