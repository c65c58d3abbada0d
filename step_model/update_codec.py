"""Encoding of model updates (pseudo-gradients) for the wire, shared by node and coordinator.

- ``fp32``: as is (4 bytes per parameter).
- ``bf16``: bfloat16 (2 bytes): ~3 significant digits. NumPy (Flower's array format) has no
  bfloat16, so the bits travel as int16 and are reinterpreted on arrival.
- ``int8``: symmetric per-row absmax quantisation (1 byte + one fp32 scale per row), as in
  INTELLECT-1's int8 pseudo-gradients. A row's scale is stored under ``"<name>#scale"``.

``decode(encode(x))`` returns fp32 tensors of the original shapes; int8 keeps every element within
half a quantisation step (max|row| / 254) of the original.

``apply_delta`` adds an int8-encoded change to weights both sides hold (the int8-delta
broadcast); ``view_id`` names such weights by their content, so that both sides can check they
hold the same bits.
"""

from __future__ import annotations

import hashlib

import torch

from step_model.errors import StepError
from step_model.protocol import ENCODINGS

SCALE_SUFFIX = "#scale"


def _check(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise StepError(
            f"unknown update encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}"
        )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View as (rows, cols): matrices keep their rows, vectors are one row."""
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def encode(update: dict[str, torch.Tensor], encoding: str) -> dict[str, torch.Tensor]:
    _check(encoding)
    out: dict[str, torch.Tensor] = {}
    for name, t in update.items():
        t = t.detach().float().cpu()
        if encoding == "fp32":
            out[name] = t.contiguous()
        elif encoding == "bf16":
            out[name] = t.to(torch.bfloat16).view(torch.int16).contiguous()
        else:
            rows = _rows(t)
            scale = rows.abs().amax(dim=1).clamp_min(1e-30)  # (rows,)
            q = torch.round(rows / scale[:, None] * 127.0).clamp(-127, 127).to(torch.int8)
            out[name] = q.reshape(t.shape).contiguous()
            out[name + SCALE_SUFFIX] = scale.contiguous()
    return out


def decode(
    encoded: dict[str, torch.Tensor], encoding: str, shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """fp32 tensors of ``shapes``; raises ValueError (for the caller to reject) on any mismatch."""
    _check(encoding)
    expected = set(shapes) | ({n + SCALE_SUFFIX for n in shapes} if encoding == "int8" else set())
    if set(encoded) != expected:
        missing, extra = sorted(expected - set(encoded)), sorted(set(encoded) - expected)
        raise ValueError(
            f"update keys differ from the model's: missing {missing[:3]}, extra {extra[:3]}"
        )
    dtype = {"fp32": torch.float32, "bf16": torch.int16, "int8": torch.int8}[encoding]
    out = {}
    for name, shape in shapes.items():
        t = encoded[name]
        if t.shape != shape or t.dtype != dtype:
            raise ValueError(
                f"{name}: got {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}"
            )
        if encoding == "int8":
            scale = encoded[name + SCALE_SUFFIX]
            if scale.dtype != torch.float32 or scale.numel() != _rows(t).shape[0]:
                raise ValueError(f"{name}{SCALE_SUFFIX}: wrong shape or dtype")
            out[name] = (_rows(t).float() * (scale[:, None] / 127.0)).reshape(shape)
        elif encoding == "bf16":
            out[name] = t.view(torch.bfloat16).float()
        else:
            out[name] = t.float()
    return out


def encoded_bytes(encoded: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in encoded.values())


def apply_delta(
    base: dict[str, torch.Tensor], encoded: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``base`` (fp32) plus the int8-encoded change: the same fp32 arithmetic wherever it runs,
    so a coordinator and a node that hold the same base get the same bits."""
    change = decode(encoded, "int8", {k: v.shape for k, v in base.items()})
    return {k: (base[k] + change[k]).contiguous() for k in base}


def view_id(weights: dict[str, torch.Tensor]) -> str:
    """A short content hash of fp32 weights (names, shapes and bits)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().float().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().data)  # the buffer itself: no copy of the weights
    return h.hexdigest()[:16]
