"""What DP-SGD costs: step time and peak memory of Opacus' hooks and ghost modes over
non-private AdamW steps, same model, same batch, measured side by side in one invocation.

    python bench/dp_overhead.py [--preset tiny] [--batch 16] [--seq-len 128] [--steps 10]

Each mode runs in its own subprocess (so peak memory is that mode's alone): the model and
optimizer are built, 2 warm-up steps run, then ``--steps`` timed steps. Memory is the peak
resident set size above the resident size before the first step (so it includes the AdamW
state, created at the first step, the same in every mode). The DP runs sample
every sequence (q = 1) so every step has exactly ``--batch`` sequences, like the baseline.
Prints one JSON line per mode and a summary with the ratios (DP / non-private).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(mode: str, preset_name: str, batch: int, seq_len: int, steps: int) -> dict:  # type: ignore[type-arg]
    import torch

    from node.dp_trainer import DPSGD, DPSettings, Records
    from step_model.config import preset
    from step_model.model import Transformer
    from step_model.secret_rng import secret_generator
    from step_model.train import make_optimizer, train_step

    torch.manual_seed(0)
    config = preset(preset_name).with_vocab(2048)
    model = Transformer(config)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    y = torch.randint(1, 2048, (batch, seq_len))
    x = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)
    if mode == "none":

        def step() -> None:
            train_step(model, optimizer, x, y, 1.0, 1e-3)
    else:
        dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch=batch, mode=mode)
        sgd = DPSGD(model, optimizer, Records(y, {"xx": batch}), dp, 0, secret_generator(0))

        def step() -> None:
            sgd.step(1e-3)

    base = rss_mib()
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - t0) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": step_s,
        "peak_extra_mib": max(0.0, peak - base),
        "peak_rss_mib": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.preset, args.batch, args.seq_len, args.steps)))
        return
    rows = {}
    for mode in ("none", "hooks", "ghost"):
        cmd = [sys.executable, __file__, "--child", mode, "--preset", args.preset,
               "--batch", str(args.batch), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[mode]), flush=True)
    base = rows["none"]
    summary = {
        "preset": args.preset,
        "params": base["params"],
        "batch": args.batch,
        "seq_len": args.seq_len,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads default",
        **{f"time_ratio_{m}": rows[m]["step_s"] / base["step_s"] for m in ("hooks", "ghost")},
        **{
            f"extra_memory_ratio_{m}": rows[m]["peak_extra_mib"] / max(base["peak_extra_mib"], 1)
            for m in ("hooks", "ghost")
        },
        "step_s": {m: r["step_s"] for m, r in rows.items()},
        "peak_extra_mib": {m: r["peak_extra_mib"] for m, r in rows.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
