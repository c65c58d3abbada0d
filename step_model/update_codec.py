"""Encoding of model updates (pseudo-gradients) for the wire, shared by node and coordinator.

- ``fp32``: as is (4 bytes per parameter).
- ``bf16``: bfloat16 (2 bytes): ~3 significant digits. NumPy (Flower's array format) has no
  bfloat16, so the bits travel as int16 and are reinterpreted on arrival.
- ``int8``: symmetric per-row absmax quantisation (1 byte + one fp32 scale per row), as in
  INTELLECT-1's int8 pseudo-gradients. A row's scale is stored under ``"<name>#scale"``.

``decode(encode(x))`` returns fp32 tensors of the original shapes; int8 keeps every element within
half a quantisation step (max|row| / 254) of the original.
"""

from __future__ import annotations

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
