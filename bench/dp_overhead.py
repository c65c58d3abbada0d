"""What DP-SGD costs: step time and peak memory of Opacus' hooks and ghost modes over
non-private AdamW steps, same model, same batch, measured side by side in one invocation.

    python bench/dp_overhead.py [--preset tiny] [--batch 16] [--seq-len 128] [--steps 10]
                                [--device cpu|cuda] [--vocab 2048]

Each mode runs in its own subprocess (so peak memory is that mode's alone): the model and
optimizer are built, 2 warm-up steps run, then ``--steps`` timed steps. Memory is the peak
above the level before the first step (so it includes the AdamW state, created at the first
step, the same in every mode): resident set size on the CPU, allocated tensor memory on a GPU.
Each DP mode is compared with the non-private step in the same precision: on the CPU all run
in fp32; on a GPU hooks mode runs in bf16 (as a node does there) against the bf16 step, ghost
mode and ``hooks-fp32`` in fp32 against the fp32 step; the ratios against the bf16 step are
printed for every mode too. The DP runs sample
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from step_model.model import next_token_loss  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Memory:
    """Peak memory above the level at ``start()``: resident set on the CPU, allocated tensor
    memory on a GPU (the resource that runs out there)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.base = 0.0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base = rss_mib()

    def peak(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fp32_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
              y: torch.Tensor, lr: float) -> None:  # fmt: skip
    """train_step without autocast: the non-private step in the precision DP-SGD runs in."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = next_token_loss(model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    float(loss.detach())  # train_step reads the loss too (a GPU sync)


def measure(mode: str, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    device = torch.device(args.device)
    model, step, precision = prepare(mode, args, device)
    memory = Memory(device)
    memory.start()
    step_s = time_steps(step, device, args.steps)
    peak = memory.peak()
    return {
        "mode": mode,
        "precision": precision,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": step_s,
        "peak_extra_mib": max(0.0, peak - memory.base),
        "peak_mib": peak,
    }


def prepare(
    mode: str, args: argparse.Namespace, device: torch.device
) -> tuple[torch.nn.Module, Callable[[], None], str]:
    """(model, one training step of ``mode``, the precision it runs in)."""
    from node.dp_trainer import DPSGD, DPSettings, Records
    from step_fed.secret_rng import secret_generator
    from step_model.config import preset
    from step_model.model import Transformer
    from step_model.train import make_optimizer, train_step

    torch.manual_seed(0)
    config = preset(args.preset).with_vocab(args.vocab)
    with device:  # initialised in place: a 1B-parameter model builds in seconds on a GPU
        model = Transformer(config)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    y = torch.randint(1, args.vocab, (args.batch, args.seq_len))
    x = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)
    xd, yd = x.to(device), y.to(device)
    precision = "fp32"
    if mode == "none":

        def step() -> None:
            fp32_step(model, optimizer, xd, yd, 1e-3)
    elif mode == "bf16":  # the product's non-private step on a GPU (bf16 autocast)
        precision = "bf16"

        def step() -> None:
            train_step(model, optimizer, xd, yd, 1.0, 1e-3)
    else:
        dp = DPSettings(1.0, 1.0, expected_batch=args.batch, mode=mode.removesuffix("-fp32"))
        records = Records(y, {"xx": args.batch})  # host memory, as in a node
        bf16 = False if mode.endswith("-fp32") else None  # None: what the node would choose
        sgd = DPSGD(model, optimizer, records, dp, 0, secret_generator(0), bf16=bf16)
        precision = "bf16" if sgd.bf16 else "fp32"

        def step() -> None:
            sgd.step(1e-3)

    return model, step, precision


def time_steps(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """Seconds per step over ``steps`` steps, after 2 warm-up steps."""
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary size (the BPE tokenizer's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args()


def run_child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure ``mode`` in a subprocess of its own (its peak memory is its alone)."""
    cmd = [sys.executable, __file__, "--child", mode, "--preset", args.preset,
           "--vocab", str(args.vocab), "--batch", str(args.batch),
           "--seq-len", str(args.seq_len), "--steps", str(args.steps),
           "--device", args.device]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def summarize(
    args: argparse.Namespace, modes: list[str], rows: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The ratios DP / non-private, each DP mode against the non-private step in its
    precision (and against the bf16 step, when there is one)."""
    # Each DP mode against the non-private step in the same precision ('none' is fp32).
    plain = {"fp32": rows["none"], "bf16": rows.get("bf16", rows["none"])}
    private = [m for m in modes if m not in ("none", "bf16")]
    summary = {
        "preset": args.preset,
        "params": rows["none"]["params"],
        "batch": args.batch,
        "seq_len": args.seq_len,
        "device": args.device,
        "machine": machine(args.device),
        **{
            f"time_ratio_{m}": rows[m]["step_s"] / plain[rows[m]["precision"]]["step_s"]
            for m in private
        },
        **{
            f"extra_memory_ratio_{m}": rows[m]["peak_extra_mib"]
            / max(plain[rows[m]["precision"]]["peak_extra_mib"], 1)
            for m in private
        },
        "precision": {m: r["precision"] for m, r in rows.items()},
        "step_s": {m: r["step_s"] for m, r in rows.items()},
        "peak_extra_mib": {m: r["peak_extra_mib"] for m, r in rows.items()},
    }
    if "bf16" in rows:  # every DP mode against the fastest non-private step (bf16)
        summary |= {
            f"time_ratio_{m}_vs_bf16": rows[m]["step_s"] / rows["bf16"]["step_s"] for m in private
        }
    return summary


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    modes = ["none", "hooks", "ghost"]
    if args.device == "cuda":  # hooks runs in bf16 there: measure bf16 without DP, hooks in fp32
        modes += ["bf16", "hooks-fp32"]
    rows = {}
    for mode in modes:
        rows[mode] = run_child(mode, args)
        print(json.dumps(rows[mode]), flush=True)
    print(json.dumps(summarize(args, modes, rows)))


if __name__ == "__main__":
    main()
