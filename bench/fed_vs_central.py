"""Federated (DiLoCo and FedAvg) vs centralized training on the same data and token budget.

Runs, in one invocation and on the same simulation config:
  1. `step-sim --config C`                     the federation as configured (DiLoCo by default)
  2. `step-sim --config C --centralized`       synchronous data parallelism on the pooled data
  3. `step-sim --config C` with FedAvg          (skip with --no-fedavg)
and prints one JSON line: mean held-out bpb of each, federated / centralized (overall and per
language), and the communication ratio: the bytes synchronous data parallelism would all-reduce
for the same steps (fp32 model bytes x steps x nodes) over the bytes the federation moved
(updates up + weights, tokenizer and config down).

    python bench/fed_vs_central.py [--config examples/sim-eu8.yaml] [--out runs/bench-fvc]
                                   [--no-fedavg] [--slow]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def step_sim(config: Path, out: Path, *extra: str) -> dict[str, Any]:
    exe = Path(sys.executable).parent / "step-sim"
    cmd = [str(exe), "--config", str(config), "--out", str(out), "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def with_strategy(config: Path, strategy: str, folder: Path) -> Path:
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc.setdefault("federation", {})["strategy"] = strategy
    path = folder / f"{config.stem}-{strategy}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("examples/sim-eu8.yaml"))
    ap.add_argument(
        "--out", type=Path, default=Path("runs") / f"bench-fvc-{time.strftime('%H%M%S')}"
    )
    ap.add_argument("--no-fedavg", action="store_true")
    ap.add_argument(
        "--slow",
        action="store_true",
        help="4x the rounds (same H): 4x the tokens, about 40 minutes per run on 2 cores",
    )
    return ap.parse_args()


def compare(
    args: argparse.Namespace, fed: dict[str, Any], central: dict[str, Any]
) -> dict[str, Any]:
    """The federated run against the centralized one: bpb and communication ratios."""
    return {
        "bench": "fed_vs_central",
        "config": str(args.config),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "federated": {
            k: fed[k]
            for k in (
                "strategy",
                "mean_bpb",
                "bytes_up",
                "bytes_down",
                "tokens",
                "wall_s",
                "rounds",
                "inner_steps",
            )
        },
        "centralized": {
            k: central[k] for k in ("mean_bpb", "tokens", "wall_s", "steps", "allreduce_bytes")
        },
        "bpb_ratio": fed["mean_bpb"] / central["mean_bpb"],
        "bpb_ratio_per_language": {
            lang: round(fed["bpb"][lang] / central["bpb"][lang], 4)
            for lang in sorted(central["bpb"])
        },
        "communication_ratio": central["allreduce_bytes"] / (fed["bytes_up"] + fed["bytes_down"]),
        "slow": args.slow,
    }


def compare_fedavg(
    args: argparse.Namespace, fed: dict[str, Any], extra: tuple[str, ...]
) -> dict[str, Any]:
    """Run the same config with FedAvg; its bpb against the federated run's."""
    with tempfile.TemporaryDirectory() as tmp:
        fedavg = step_sim(
            with_strategy(args.config, "fedavg", Path(tmp)), args.out / "fedavg", *extra
        )
    return {
        "fedavg": {"mean_bpb": fedavg["mean_bpb"], "wall_s": fedavg["wall_s"]},
        "fedavg_vs_diloco": fedavg["mean_bpb"] / fed["mean_bpb"],
    }


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=False)
    extra: tuple[str, ...] = ()
    if args.slow:
        rounds = yaml.safe_load(args.config.read_text(encoding="utf-8"))["federation"]["rounds"]
        extra = ("--rounds", str(4 * int(rounds)))
    fed = step_sim(args.config, args.out / "federated", *extra)
    central = step_sim(args.config, args.out / "centralized", "--centralized", *extra)
    result = compare(args, fed, central)
    if not args.no_fedavg:
        result |= compare_fedavg(args, fed, extra)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
