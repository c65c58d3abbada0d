"""The node's inner loop on GPUs: tokens/s and model FLOPs utilisation (MFU), one JSON line per
measure. Run by bench/gpu_check.sh on a machine with CUDA GPUs (one script, under 10 minutes).

    python bench/gpu_check.py one  --preset 1b [--dp ghost|hooks]   one device: train_round
    torchrun --nproc-per-node N bench/gpu_check.py workers --preset 1b [--dp]
                                                                     N workers: sharded_round

Each measure trains three rounds of the node's real loop (node/trainer.py ``train_round`` on
one device, node/sharded_round.py ``sharded_round`` on workers: batches of the node's data,
AdamW, gradient clipping, the pseudo-gradient, int8 error feedback and the saved state), each
from fresh state: a first one of ``--short`` inner steps that warms up (kernels chosen, memory
pools grown: not timed), one more of ``--short`` and one of ``--long``; the time per step is
their difference over the steps: what a round costs beyond its fixed part (building the model,
encoding the update, saving the state). MFU = tokens/s x the model's training FLOPs per token
(``ModelConfig.flops_per_token``: 6 x non-embedding parameters + attention) / the GPUs' dense
bf16 peak (H100/H200 989 TFLOP/s, A100 312; unknown GPUs get none). DP-SGD steps draw Poisson
batches of the expected size, so their tokens are the expected count.

``--device cpu`` (with ``--preset debug``, gloo for workers) runs the same code on a CPU: the
smoke run of the script itself, not a measure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from node.data import NodeData
from node.dp_trainer import DPSettings, make_records
from node.sharded_dp import WorkerDP
from node.sharded_round import sharded_round
from node.state import NodeStateStore
from node.trainer import PrivateRound, train_round
from step_fed.protocol import RoundConfig
from step_model.checkpoint import seeded_weights
from step_model.config import ModelConfig, preset
from step_model.data import tokenize_texts
from step_model.tokenizer import ByteTokenizer

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peak of one GPU, FLOP/s (NVIDIA's data sheets, SXM parts)."""


def round_config(name: str, batch: int, seq: int, steps: int) -> RoundConfig:
    tok = ByteTokenizer()
    return RoundConfig(
        round=1, total_rounds=1, inner_steps=steps, inner_lr=3e-4, min_lr_ratio=0.1,
        warmup_steps=0, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
        batch_size=batch, seq_len=seq, alpha=0.3, seed=0, update_encoding="int8",
        model_json=json.dumps(model(name).to_dict()), tokenizer=tok.to_json(),
        tokenizer_sha256="gpu-check",
    )  # fmt: skip


def model(name: str) -> ModelConfig:
    return preset(name).with_vocab(ByteTokenizer().vocab_size)


def node_data(tokens: int) -> NodeData:
    """Text enough for ``tokens`` byte tokens (what it says does not change the speed)."""
    line = "Η ομοσπονδία εκπαιδεύει ένα κοινό μοντέλο χωρίς να μετακινεί δεδομένα. "
    text = line * (tokens // len(line.encode("utf-8")) + 2)
    return NodeData(train=tokenize_texts({"el": text}, ByteTokenizer()), valid={})


def peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    gpu = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in gpu), None)


def one(args: argparse.Namespace, device: torch.device) -> None:
    """Two rounds of ``train_round`` on one device; the seconds of each."""
    data = node_data(2 * args.long * args.batch * args.seq)
    times = []
    for steps in (args.short, args.short, args.long):
        cfg = round_config(args.preset, args.batch, args.seq, steps)
        private = None
        if args.dp:
            records = make_records(data.train, args.seq)
            private = PrivateRound(records, DPSettings(1.0, 1.0, args.batch, args.dp),
                                   torch.Generator().manual_seed(0))  # fmt: skip
        with tempfile.TemporaryDirectory() as state:
            weights = seeded_weights(model(args.preset), 0)
            result = train_round("gpu-check", data, ByteTokenizer(), cfg, weights,
                                 NodeStateStore(Path(state)), private, device)  # fmt: skip
        times.append(result.wall_s)
    report(args, device, 1, times)


def workers(args: argparse.Namespace, device: torch.device) -> None:
    """Two rounds of ``sharded_round`` on every worker; worker 0 reports."""
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    data = node_data(2 * args.long * args.batch * args.seq)
    times = []
    for steps in (args.short, args.short, args.long):
        cfg = round_config(args.preset, args.batch, args.seq, steps)
        private = WorkerDP(DPSettings(1.0, 1.0, args.batch, "ghost"), 0) if args.dp else None
        folder = [tempfile.mkdtemp() if dist.get_rank() == 0 else ""]
        dist.broadcast_object_list(folder)  # one state folder (one host)
        weights = (lambda: seeded_weights(model(args.preset), 0)) if dist.get_rank() == 0 else None
        result = sharded_round("gpu-check", data, ByteTokenizer(), cfg, weights,
                               NodeStateStore(Path(folder[0])), device, "auto", False,
                               args.sharding, private)  # fmt: skip
        if result is not None:
            times.append(result.wall_s)
    if dist.get_rank() == 0:
        report(args, device, dist.get_world_size(), times)
    dist.destroy_process_group()


def report(args: argparse.Namespace, device: torch.device, gpus: int, times: list[float]) -> None:
    per_step = (times[2] - times[1]) / (args.long - args.short)
    tokens_s = args.batch * args.seq / per_step
    config = model(args.preset)
    flops = config.flops_per_token(args.seq) * tokens_s
    top = peak(device)
    print(json.dumps({
        "measure": f"{args.mode}{'-dp-' + str(args.dp) if args.dp else ''}", "preset": args.preset,
        "params": config.num_params(), "gpus": gpus, "sharding": args.sharding,
        "batch": args.batch, "seq_len": args.seq, "s_per_step": round(per_step, 4),
        "tokens_per_s": round(tokens_s), "tflops": round(flops / 1e12, 1),
        "mfu": None if top is None else round(flops / (top * gpus), 3),
        "round_s": [round(t, 1) for t in times],
        "steps": [args.short, args.short, args.long],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }), flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["one", "workers"])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--short", type=int, default=2)
    ap.add_argument("--long", type=int, default=12)
    ap.add_argument("--dp", choices=["ghost", "hooks"], default=None)
    ap.add_argument("--sharding", default="full_shard", choices=["full_shard", "replicate"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    t0 = time.perf_counter()
    (one if args.mode == "one" else workers)(args, device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"measure": "wall", "mode": args.mode, "preset": args.preset,
                          "s": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
