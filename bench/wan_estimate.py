"""Internet-scale estimate: the wall time of a `1b` and a `7b` federation of 8 institutions over
1 and 10 Gbit/s links, against synchronous data parallelism over the same links.

Measured, from a federated run folder (``--run``, e.g. a `step-sim` run of the default
example): the bytes a node sends up and receives down per round, per parameter of the run's
model (the encodings cost a fixed number of bytes per parameter, so this scales to any size),
and the schedule (rounds, inner steps H). Derived, without a GPU: the compute time of a step
from ``flops_per_token`` of the preset at a stated MFU on a stated GPU. Every assumption is a
flag and is printed with the table.

Model of a round (no overlap of compute and communication in either method: both figures are
upper bounds, and overlap would help synchronous training more):
- synchronous data parallelism: every step, a ring all-reduce of the bf16 gradient among the
  institutions: each sends and receives 2 (n-1)/n x 2 bytes x P over its own link;
- the federation: H local steps, then each node sends its update up and receives the change
  down; the coordinator's link carries all n of each, so a round's communication takes
  n x (up + down) / link (the coordinator's link is the bottleneck, taken as fast as a node's).

    python bench/wan_estimate.py --run RUN [--gpus-per-institution 8] [--mfu 0.4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from step_model.config import preset

GBIT = 1e9 / 8  # bytes per second of one Gbit/s


def measured(run: Path) -> dict[str, float]:
    """Bytes per node per round per parameter, up and down, and the mean local steps per
    round (H), from the run's summary and round records."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    rounds = [r for r in records if r.get("kind") == "round"]
    node_rounds = sum(int(r["nodes"]) for r in rounds)
    params = float(summary["params"])
    node_steps = summary["allreduce_bytes"] / (4 * params)  # sum over rounds of H x nodes
    return {
        "up_per_param": sum(int(r["bytes_up"]) for r in rounds) / node_rounds / params,
        "down_per_param": sum(int(r["bytes_down"]) for r in rounds) / node_rounds / params,
        "rounds": len(rounds),
        "H": node_steps / node_rounds,
        "comm_ratio": float(summary["comm_ratio"]),
    }


def estimate(
    args: argparse.Namespace, name: str, link_gbit: float, m: dict[str, float]
) -> dict[str, Any]:
    """Wall time of training ``name`` on ``args.tokens_per_param`` x P tokens, both ways."""
    cfg = preset(name)
    params = cfg.num_params()
    tokens = args.tokens_per_param * params
    steps = tokens / args.global_batch_tokens
    node_tokens = args.global_batch_tokens / args.institutions  # per institution and step
    flops = cfg.flops_per_token(args.seq_len) * node_tokens
    compute_s = flops / (args.gpus_per_institution * args.gpu_tflops * 1e12 * args.mfu)
    link = link_gbit * GBIT
    n = args.institutions
    allreduce_s = 2 * (n - 1) / n * 2 * params / link
    sync_s = steps * (compute_s + allreduce_s)
    h = m["H"]  # mean local steps per round, as measured
    round_comm_s = n * (m["up_per_param"] + m["down_per_param"]) * params / link
    fed_s = steps * compute_s + steps / h * round_comm_s
    return {
        "model": name,
        "params": params,
        "link_gbit": link_gbit,
        "steps": steps,
        "compute_s_per_step": compute_s,
        "sync_comm_s_per_step": allreduce_s,
        "fed_comm_s_per_round": round_comm_s,
        "H": h,
        "sync_days": sync_s / 86400,
        "fed_days": fed_s / 86400,
        "speedup": sync_s / fed_s,
        "sync_compute_share": steps * compute_s / sync_s,
        "fed_compute_share": steps * compute_s / fed_s,
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a federated run folder")
    ap.add_argument("--institutions", type=int, default=8)
    ap.add_argument("--gpus-per-institution", type=int, default=8)
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 (H100 SXM)")
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--global-batch-tokens", type=float, default=2**21, help="2M tokens")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--tokens-per-param", type=float, default=20.0, help="Chinchilla")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    m = measured(args.run)
    rows = [estimate(args, name, link, m) for name in ("1b", "7b") for link in (1.0, 10.0)]
    print(f"measured in {args.run}: up {m['up_per_param']:.4f} and down "
          f"{m['down_per_param']:.4f} bytes per parameter per node and round, H = "
          f"{m['H']:.2f}, comm ratio {m['comm_ratio']:.1f}x")  # fmt: skip
    print(f"assumed: {args.institutions} institutions of {args.gpus_per_institution} GPUs at "
          f"{args.gpu_tflops:g} TFLOP/s x MFU {args.mfu:g}; global batch "
          f"{args.global_batch_tokens:,.0f} tokens of {args.seq_len}; "
          f"{args.tokens_per_param:g} tokens per parameter; bf16 gradients ring-all-reduced; "
          "no overlap of compute and communication")  # fmt: skip
    print("| model | link | steps | compute/step | sync comm/step | fed comm/round | sync days "
          "| fed days | speedup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['link_gbit']:g} Gbit/s | {r['steps']:,.0f} | "
              f"{r['compute_s_per_step']:.2f} s | {r['sync_comm_s_per_step']:.1f} s | "
              f"{r['fed_comm_s_per_round']:.1f} s | {r['sync_days']:.1f} | {r['fed_days']:.1f} | "
              f"{r['speedup']:.1f}x |")  # fmt: skip
    print(json.dumps({"measured": m, "assumed": vars(args) | {"run": str(args.run)},
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
