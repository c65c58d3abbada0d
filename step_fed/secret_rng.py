"""Random draws that the other side of the federation must not be able to replay: DP noise and
DP sampling. Seeded by the operating system, never from the federation seed, which every party
knows (a coordinator that could regenerate a node's noise could subtract it)."""

from __future__ import annotations

import os

import torch


def secret_generator(seed: int | None = None) -> torch.Generator:
    """A generator seeded by the OS (``seed`` only for tests that need repeatable draws)."""
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return g
