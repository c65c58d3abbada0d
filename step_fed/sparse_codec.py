"""Sparse encodings: the k largest of every 256 values, for updates a tenth the size of int3.

``top<K>-<values>`` splits a tensor, flattened, into chunks of ``CHUNK`` = 256 values (the last
one padded with zeros) and sends, per chunk, the positions of its ``K`` largest magnitudes and
those values, quantised against one bfloat16 scale per chunk:

- ``sign``: one bit per value, each value +-scale with scale = the mean magnitude of the chunk's
  K values (SparseLoCo's 1-2 bit values; the magnitude error is taken by error feedback);
- ``int4``: 15 levels (-7..7) against the largest of the K magnitudes.

Wire tensors of a tensor ``name`` of n values, C = ceil(n / 256) chunks:

    name           uint8 (C*K,)   chunk-local positions (0..255), ascending within a chunk
    name#values    uint8          the values packed (sign: 8 per byte; int4: 2 per byte)
    name#scale     int16 (C,)     the chunk scales' bfloat16 bits

so a parameter costs (K + K*bits/8 + 2) / 256 bytes: top8-sign 11/256 = 0.043 (int3: 0.375).
Positions are one byte each because they are chunk-local; that is ~1.4x their entropy
(log2 C(256, 8) = 46 bits for 8 of 256), a cost paid for a decoder that is one scatter.

Everything not sent stays in the sender's error-feedback residual (node/trainer.py for updates,
coordinator/broadcast.py for the ``-delta`` broadcast), so ``sent + residual`` is exactly what
was to be sent: nothing is lost, only delayed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

CHUNK = 256
"""Values per chunk: positions fit one byte."""
VALUES_SUFFIX = "#values"
_NAME = re.compile(r"top(\d+)-(sign|int4)")
_BITS = {"sign": 1, "int4": 4}


def sparse_spec(encoding: str) -> tuple[int, str] | None:
    """(K, value code) of a ``top<K>-<values>`` encoding; None for any other."""
    match = _NAME.fullmatch(encoding)
    return None if match is None else (int(match[1]), match[2])


def sparse_bytes_per_chunk(encoding: str) -> int:
    """Wire bytes of one full chunk: K positions, the packed values and the scale."""
    spec = sparse_spec(encoding)
    assert spec is not None
    k, code = spec
    return k + -(-k * _BITS[code] // 8) + 2


def _chunks(flat: torch.Tensor) -> torch.Tensor:
    """(C, CHUNK) fp32: ``flat`` zero-padded to whole chunks."""
    return torch.cat([flat, flat.new_zeros(-flat.numel() % CHUNK)]).reshape(-1, CHUNK)


def encode_sparse(t: torch.Tensor, encoding: str, name: str) -> dict[str, torch.Tensor]:
    """The wire tensors of ``t`` (any shape, fp32 on the CPU)."""
    spec = sparse_spec(encoding)
    assert spec is not None
    k, code = spec
    chunks = _chunks(t.reshape(-1))
    pos = chunks.abs().topk(k, dim=1, sorted=False).indices.sort(dim=1).values  # (C, K)
    picked = chunks.gather(1, pos)  # (C, K)
    if code == "sign":
        scale = picked.abs().mean(dim=1).clamp_min(1e-30).to(torch.bfloat16)
        bits = (picked >= 0).to(torch.int32)  # 1: +scale, 0: -scale
        packed = _pack_bits(bits)
    else:
        scale = picked.abs().amax(dim=1).clamp_min(1e-30).to(torch.bfloat16)
        q = (picked / scale.float()[:, None]).mul_(7).round_().clamp_(-7, 7)
        packed = _pack_int4(q.to(torch.int32) + 7)
    return {
        name: pos.to(torch.uint8).reshape(-1).contiguous(),
        name + VALUES_SUFFIX: packed,
        name + "#scale": scale.view(torch.int16).contiguous(),
    }


def decode_sparse(
    wire: Mapping[str, torch.Tensor], encoding: str, name: str, shape: torch.Size
) -> torch.Tensor:
    """fp32 of ``shape``; ValueError on wire tensors of the wrong size or type."""
    spec = sparse_spec(encoding)
    assert spec is not None
    k, code = spec
    n_chunks = -(-shape.numel() // CHUNK)
    pos, packed, scale = wire[name], wire[name + VALUES_SUFFIX], wire[name + "#scale"]
    got = {name: pos, name + VALUES_SUFFIX: packed, name + "#scale": scale}
    want = {
        name: (torch.uint8, (n_chunks * k,)),
        name + VALUES_SUFFIX: (torch.uint8, (-(-n_chunks * k * _BITS[code] // 8),)),
        name + "#scale": (torch.int16, (n_chunks,)),
    }
    for key, (dtype, size) in want.items():
        t = got[key]
        if t.dtype != dtype or tuple(t.shape) != size:
            raise ValueError(f"{key}: got {t.dtype} {tuple(t.shape)}, expected {dtype} {size}")
    scales = scale.view(torch.bfloat16).float()[:, None]  # (C, 1)
    if code == "sign":
        signs = _unpack_bits(packed, n_chunks * k).reshape(n_chunks, k).float() * 2 - 1
        values = signs * scales
    else:
        try:
            levels = _unpack_int4(packed, n_chunks * k).reshape(n_chunks, k).float() - 7
        except ValueError as e:
            raise ValueError(f"{name}{VALUES_SUFFIX}: {e}") from None
        values = levels * (scales / 7)
    out = torch.zeros(n_chunks, CHUNK)
    out.scatter_(1, pos.long().reshape(n_chunks, k), values)  # a repeated position: one value
    return out.reshape(-1)[: shape.numel()].reshape(shape)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 values, flat -> uint8, 8 per byte (little-endian bit order, zero-padded)."""
    flat = bits.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).reshape(-1, 8)
    return (flat << torch.arange(8, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def _unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    bits = (packed.to(torch.int32)[:, None] >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:count]


def _pack_int4(levels: torch.Tensor) -> torch.Tensor:
    """0..14 values, flat -> uint8, two per byte (low nibble first, zero-padded)."""
    flat = levels.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros(flat.numel() % 2)]).reshape(-1, 2)
    return (flat[:, 0] | (flat[:, 1] << 4)).to(torch.uint8)


def _unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    p = packed.to(torch.int32)
    nibbles = torch.stack([p & 0xF, p >> 4], dim=1).reshape(-1)[:count]
    if bool((nibbles > 14).any()):
        raise ValueError("int4 values out of range (corrupted in transit)")
    return nibbles
