"""Update codec speed on a model-sized tensor set, as a ratio to a plain torch copy.

For each encoding, every tensor of the preset's model (random values, fp32, allocated one
tensor at a time so that a `1b` set fits in memory) is encoded and decoded with
``step_fed.update_codec``; in the same run, the same tensors are copied with ``Tensor.clone()``
(the floor any codec that reads its input and writes an output pays). Times are summed over the
tensors; the ratio is codec time / copy time (1.0 = as fast as a copy).

    python bench/codec_throughput.py [--preset 1b] [--encodings int8,int4,int3,int2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from step_fed.update_codec import decode_one, encode  # noqa: E402
from step_model.config import preset as model_preset  # noqa: E402
from step_model.model import Transformer  # noqa: E402


def shapes_of(preset: str) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in Transformer(model_preset(preset)).state_dict().items()}


def measure(shapes: dict[str, torch.Size], encodings: list[str]) -> dict[str, Any]:
    """Seconds per phase, summed over the tensors: copy, then per encoding encode and decode."""
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"copy": 0.0, **{f"{e} {p}": 0.0 for e in encodings
                                           for p in ("encode", "decode")}}  # fmt: skip
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen) * 1e-3
        start = time.perf_counter()
        copy = t.clone()
        out["copy"] += time.perf_counter() - start
        del copy
        for e in encodings:
            start = time.perf_counter()
            encoded = encode({name: t}, e)
            out[f"{e} encode"] += time.perf_counter() - start
            start = time.perf_counter()
            decoded = decode_one(encoded, e, name, shape)
            out[f"{e} decode"] += time.perf_counter() - start
            del encoded, decoded
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="1b")
    p.add_argument("--encodings", default="int8,int4,int3,int2")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shapes = shapes_of(args.preset)
    params = sum(s.numel() for s in shapes.values())
    encodings = args.encodings.split(",")
    seconds = measure(shapes, encodings)
    gib = params * 4 / 2**30
    print(f"{args.preset}: {params:,} parameters, {gib:.2f} GiB fp32, {args.threads} threads")
    print("| phase | seconds | fp32 GiB/s | / torch copy |")
    print("|---|---|---|---|")
    copy = seconds["copy"]
    for phase, s in seconds.items():
        print(f"| {phase} | {s:.2f} | {gib / s:.2f} | {s / copy:.1f}x |")


if __name__ == "__main__":
    main()
