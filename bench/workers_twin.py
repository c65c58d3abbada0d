"""An institution on torchrun workers against its single-device twin, in the same federation.

Runs `step-sim` twice on one config (real data, Flower's simulation engine), identical except
that the first institution trains on ``--gpus`` torchrun workers (FSDP2 over gloo on a CPU
machine) in one run and on one device in the other; prints one JSON line: each run's mean
held-out bits per byte, per language, and the difference (goal: within 0.01). With
``--private`` that institution trains with local DP-SGD (epsilon 8) in both runs: its noise is
drawn afresh in each, so the two differ by the noise as well as by float order; ``--private
--gpus 1`` runs two one-device twins: the spread the noise alone gives.

    python bench/workers_twin.py [--config bench/configs/sim-eu4.yaml] [--gpus 2] [--private]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fed_vs_central import step_sim


def twin_config(base: Path, folder: Path, gpus: int, private: bool, rounds: int) -> Path:
    """The base config cut to its first two institutions and ``rounds`` rounds; the first
    institution on ``gpus`` workers."""
    doc: dict[str, Any] = yaml.safe_load(base.read_text(encoding="utf-8"))
    doc["institutions"] = doc["institutions"][:2]
    first = doc["institutions"][0]
    first["gpus"] = gpus
    if private:
        first["privacy"] = {"epsilon": 8.0, "delta": 1e-6, "rounds": rounds}
    fed = doc["federation"]
    fed.update(rounds=rounds, early_rounds=0, min_nodes=2, eval_every=rounds)
    path = folder / f"twin-gpus{gpus}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("bench/configs/sim-eu4.yaml"))
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--private", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="workers-twin-") as tmp:
        folder = Path(tmp)
        runs = []
        for i, gpus in enumerate((args.gpus, 1)):  # --gpus 1: two one-device runs (DP spread)
            cfg = twin_config(args.config, folder, gpus, args.private, args.rounds)
            t0 = time.perf_counter()
            summary = step_sim(cfg, folder / f"run-{i}")
            runs.append((summary, time.perf_counter() - t0))
    (workers, w_s), (one, o_s) = runs
    langs = sorted(workers["bpb"])
    print(json.dumps({
        "config": str(args.config), "rounds": args.rounds, "private": args.private,
        "gpus": args.gpus, "mean_bpb_workers": round(workers["mean_bpb"], 4),
        "mean_bpb_one_device": round(one["mean_bpb"], 4),
        "difference": round(workers["mean_bpb"] - one["mean_bpb"], 4),
        "largest_language_difference": round(max(abs(workers["bpb"][k] - one["bpb"][k])
                                                 for k in langs), 4),
        "wall_s_workers": round(w_s, 1), "wall_s_one_device": round(o_s, 1),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
