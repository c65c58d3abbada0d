"""Encoding of model updates (pseudo-gradients) for the wire, shared by node and coordinator.

- ``fp32``: as is (4 bytes per parameter).
- ``bf16``: bfloat16 (2 bytes): ~3 significant digits. NumPy (Flower's array format) has no
  bfloat16, so the bits travel as int16 and are reinterpreted on arrival.
- ``int8``: symmetric per-row absmax quantisation (1 byte + one scale per row), as in
  INTELLECT-1's int8 pseudo-gradients. A row's scale is stored under ``"<name>#scale"``, in
  bfloat16 (its bits as int16); values are quantised against the rounded scale, so the
  receiver's arithmetic is exact.
- ``int4``: the same with 15 levels (-7..7), two values packed per byte (uint8, flat).
- ``int3``: the same with 7 levels (-3..3), eight values in three bytes (7**8 < 2**24).
- ``int2``: ternary (-1, 0, 1) times the row's *mean* absolute value (absmax would round almost
  everything to 0), five values per byte (base 3: 3**5 = 243 <= 256, 1.6 bits per value).
  Large values are clipped to the scale.
- ``int1``: the sign times the row's mean absolute value (signSGD with error feedback), eight
  values per byte (1 bit per value).

``decode(encode(x))`` returns fp32 tensors of the original shapes; int8 keeps every element within
half a quantisation step (max|row| / 254, times 1 + 2**-8 for the bf16 scale) of the original,
int4 within max|row| / 14 and int3 within max|row| / 6 (the same factor). The lossy encodings
are meant to be used with error feedback (what rounding lost is sent with the next update): the
nodes do it for updates (node/trainer.py), the coordinator for the broadcast.

- ``top<K>-sign``, ``top<K>-int4``: sparse, the K largest of every 256 values with their
  chunk-local positions (sparse_codec.py); 0.02-0.16 bytes per parameter.

``apply_delta`` adds a quantised change to weights both sides hold (the ``intN-delta``
broadcast); ``view_id`` names such weights by their content, so that both sides can check they
hold the same bits.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

import torch

from step_common.errors import StepError
from step_fed.protocol import ENCODINGS
from step_fed.sparse_codec import VALUES_SUFFIX, decode_sparse, encode_sparse, sparse_spec

SCALE_SUFFIX = "#scale"


QUANTISED: dict[str, int] = {"int8": 127, "int4": 7, "int3": 3, "int2": 1, "int1": 1}
"""Encoding -> largest level: values are round(x / scale * level), in -level..level (int1:
-1 or 1, the sign)."""
_PACKING = {"int4": (2, 1), "int3": (8, 3), "int2": (5, 1), "int1": (8, 1)}
"""Packed encodings: (values, bytes) per group. A group of bytes holds, little-endian, the
number sum(v_i * base**i) with base = ``_base(encoding)`` levels; a group >= base**values
cannot come from the encoder."""


def lossy(encoding: str) -> bool:
    """Whether decode(encode(x)) may differ from x beyond bf16 rounding: what the sender then
    keeps as its error-feedback residual."""
    return encoding in QUANTISED or sparse_spec(encoding) is not None


def _check(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise StepError(
            f"unknown update encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}"
        )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View as (rows, cols): matrices keep their rows, vectors are one row."""
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def _scale(rows: torch.Tensor, encoding: str) -> torch.Tensor:
    """(rows,) bfloat16: the value of the largest level (bf16 halves what scales cost; the
    quantiser divides by the rounded value, and error feedback takes what that changes)."""
    mean = encoding in ("int2", "int1")
    mag = rows.abs().mean(dim=1) if mean else rows.abs().amax(dim=1)
    return mag.clamp_min(1e-30).to(torch.bfloat16)


def _pack(values: torch.Tensor, base: int, per: int, width: int) -> torch.Tensor:
    """Values in 0..base-1, flat -> uint8: ``per`` values in each ``width`` bytes (zero-padded
    at the end). int32 arithmetic: base**per < 2**31 for every packing."""
    flat = values.reshape(-1).to(torch.int32)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % per)]).reshape(-1, per)
    powers = base ** torch.arange(per, dtype=torch.int32)
    number = (flat * powers).sum(dim=1, dtype=torch.int32)  # (groups,) < base**per
    if width == 1:
        return number.to(torch.uint8)
    group = (number[:, None] >> (8 * torch.arange(width, dtype=torch.int32))) & 0xFF
    return group.to(torch.uint8).reshape(-1)  # (groups * width,), little-endian


def _unpack(packed: torch.Tensor, base: int, per: int, width: int, numel: int) -> torch.Tensor:
    """The values of ``_pack``, flat, as int8; raises ValueError on a group no encoder writes.
    Digits are looked up in tables (a decode runs several times a round): a byte's at once,
    a wider group's in two halves."""
    if width == 1:  # (int1's 2**8 fills the byte: nothing to check, and uint8 cannot hold 256)
        if base**per < 256 and bool((packed >= base**per).any()):
            raise ValueError("packed values out of range (corrupted in transit)")
        return _digits(base, per, 256)[packed.long()].reshape(-1)[:numel]
    group = packed.to(torch.int32).reshape(-1, width)
    number = (group << (8 * torch.arange(width, dtype=torch.int32))).sum(dim=1, dtype=torch.int32)
    if bool((number >= base**per).any()):
        raise ValueError("packed values out of range (corrupted in transit)")
    low = per // 2
    high = torch.div(number, base**low, rounding_mode="floor").long()
    rest = (number % base**low).long()
    values = torch.cat(
        [_digits(base, low, base**low)[rest], _digits(base, per - low, base ** (per - low))[high]],
        dim=1,
    )  # (groups, per)
    return values.reshape(-1)[:numel]


@functools.cache
def _digits(base: int, per: int, count: int) -> torch.Tensor:
    """(count, per) int8 (a digit is < 7): the ``per`` base-``base`` digits of 0..count-1, least
    significant first. int8, so that a decoded update is one byte per value until it becomes
    fp32."""
    powers = base ** torch.arange(per)
    return ((torch.arange(count)[:, None] // powers) % base).to(torch.int8)


def _base(encoding: str) -> int:
    """Levels per packed value: -level..level, or the two signs of int1 (no zero)."""
    return 2 if encoding == "int1" else 2 * QUANTISED[encoding] + 1


def _packed_len(numel: int, encoding: str) -> int:
    per, width = _PACKING[encoding]
    return -(-numel // per) * width


def encode(update: dict[str, torch.Tensor], encoding: str) -> dict[str, torch.Tensor]:
    _check(encoding)
    out: dict[str, torch.Tensor] = {}
    for name, t in update.items():
        t = t.detach().float().cpu()
        if encoding == "fp32":
            out[name] = t.contiguous()
        elif encoding == "bf16":
            out[name] = t.to(torch.bfloat16).view(torch.int16).contiguous()
        elif sparse_spec(encoding) is not None:
            out.update(encode_sparse(t, encoding, name))
        else:
            level = QUANTISED[encoding]
            rows = _rows(t)
            scale = _scale(rows, encoding)
            if encoding == "int1":  # 1 for >= 0, 0 for < 0
                out[name] = _pack((rows >= 0).to(torch.int32), 2, *_PACKING[encoding])
                out[name + SCALE_SUFFIX] = scale.view(torch.int16).contiguous()
                continue
            # in place after the first op: one temporary the size of the tensor, not four
            q = (rows / scale.float()[:, None]).mul_(level).round_().clamp_(-level, level)
            if encoding == "int8":
                out[name] = q.to(torch.int8).reshape(t.shape).contiguous()
            else:
                out[name] = _pack(q + level, _base(encoding), *_PACKING[encoding])
            out[name + SCALE_SUFFIX] = scale.view(torch.int16).contiguous()
    return out


def decode(
    encoded: dict[str, torch.Tensor], encoding: str, shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """fp32 tensors of ``shapes``; raises ValueError (for the caller to reject) on any mismatch."""
    check_keys(encoded, encoding, shapes)
    return {name: decode_one(encoded, encoding, name, shape) for name, shape in shapes.items()}


def check_keys(
    encoded: Mapping[str, torch.Tensor], encoding: str, shapes: dict[str, torch.Size]
) -> None:
    """ValueError unless ``encoded`` holds exactly the tensors (and row scales) of ``shapes``."""
    _check(encoding)
    expected = set(shapes)
    if lossy(encoding):
        expected |= {n + SCALE_SUFFIX for n in shapes}
    if sparse_spec(encoding) is not None:
        expected |= {n + VALUES_SUFFIX for n in shapes}
    if set(encoded) != expected:
        missing, extra = sorted(expected - set(encoded)), sorted(set(encoded) - expected)
        raise ValueError(
            f"update keys differ from the model's: missing {missing[:3]}, extra {extra[:3]}"
        )


def decode_one(
    encoded: Mapping[str, torch.Tensor], encoding: str, name: str, shape: torch.Size
) -> torch.Tensor:
    """The fp32 tensor ``name`` of an encoded update (its keys checked by ``check_keys``): one
    tensor at a time, so a holder of many encoded updates never holds them all decoded."""
    if sparse_spec(encoding) is not None:
        return decode_sparse(encoded, encoding, name, shape)
    t = encoded[name]
    _check_wire_shape(name, t, encoding, shape)
    if encoding in QUANTISED:
        return _dequantise(name, t, encoded[name + SCALE_SUFFIX], encoding, shape)
    if encoding == "bf16":
        return t.view(torch.bfloat16).float()
    return t.float()


def _check_wire_shape(name: str, t: torch.Tensor, encoding: str, shape: torch.Size) -> None:
    if encoding in _PACKING:
        want: tuple[int, ...] = (_packed_len(shape.numel(), encoding),)
        dtype = torch.uint8
    else:
        want = tuple(shape)
        dtype = {"fp32": torch.float32, "bf16": torch.int16, "int8": torch.int8}[encoding]
    if tuple(t.shape) != want or t.dtype != dtype:
        raise ValueError(f"{name}: got {t.dtype} {tuple(t.shape)}, expected {dtype} {want}")


def _dequantise(
    name: str, t: torch.Tensor, scale: torch.Tensor, encoding: str, shape: torch.Size
) -> torch.Tensor:
    n_rows = shape[0] if len(shape) >= 2 else 1
    if scale.dtype != torch.int16 or scale.shape != (n_rows,):
        raise ValueError(f"{name}{SCALE_SUFFIX}: expected ({n_rows},) int16 (bfloat16 bits)")
    level = QUANTISED[encoding]
    if encoding == "int8":
        q = t.reshape(n_rows, -1).float()
    else:
        try:
            values = _unpack(t, _base(encoding), *_PACKING[encoding], shape.numel())
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        q = values.float().reshape(n_rows, -1)
        q = q.mul_(2).sub_(1) if encoding == "int1" else q.sub_(level)
    # in place: q is this call's own tensor (one fp32 copy of the update, not two)
    return q.mul_(row_scales(scale)[:, None] / level).reshape(shape)


def row_scales(wire: torch.Tensor) -> torch.Tensor:
    """A row-scale tensor as it travels (bfloat16 bits as int16) -> fp32."""
    return wire.view(torch.bfloat16).float()


def encoded_bytes(encoded: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in encoded.values())


def apply_delta(
    base: dict[str, torch.Tensor], encoded: dict[str, torch.Tensor], encoding: str
) -> dict[str, torch.Tensor]:
    """``base`` (fp32) plus the quantised change: the same fp32 arithmetic wherever it runs,
    so a coordinator and a node that hold the same base get the same bits."""
    change = decode(encoded, encoding, {k: v.shape for k, v in base.items()})
    return {k: (base[k] + change[k]).contiguous() for k in base}


def view_id(weights: dict[str, torch.Tensor]) -> str:
    """A short content hash of fp32 weights (names, shapes and bits)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().float().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().data)  # the buffer itself: no copy of the weights
    return h.hexdigest()[:16]
