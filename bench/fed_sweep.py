"""Sweep federation settings quickly: in-process federations (no SuperLink, no Ray) on one
simulation config, each variant a list of `federation` overrides, and optionally the
centralized baseline. Prints one JSON line per variant: final mean held-out bpb and wall time.

    python bench/fed_sweep.py --config examples/sim-eu8.yaml --tokenizer T.json \\
        --variant "diloco-H40" --variant "fedavg-H40 strategy=fedavg outer_lr=1.0 \\
        outer_momentum=0" --centralized [--stop-round N] [--out DIR]

The arithmetic is the deployed one (step_sim/local_transport.py); the variants run one after
another with one torch thread each, so two sweeps can share a 2-core machine. `--stop-round N`
ends each run after round N with a quick evaluation (the schedule still spans all rounds): a
cheap look at the early rounds. A variant whose name starts with "centralized" runs the
baseline with its overrides (e.g. "centralized-warm init_from=CKPT"). `--resume` (runs that
take hours, e.g. the `tiny` preset) keeps the run folders: a variant that finished is reported
from its summary.json, an interrupted one continues after its last checkpoint (a federation's
last committed round, a baseline's last evaluation), bit for bit as if uninterrupted.
Overrides named ``privacy.KEY=VALUE`` set the config's top-level local-DP settings
(``privacy=none`` removes them), e.g. "eps4 privacy.epsilon=4".
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from coordinator.rounds import RoundRunner
from node.privacy_config import privacy_from_dict
from step_sim.centralized import run_centralized
from step_sim.config import SimConfig, load_sim_config
from step_sim.local_transport import LocalTransport


def parse_value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, *pairs = spec.split()
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = parse_value(value)
    return name, overrides


def run_federated(
    sim: SimConfig, run_dir: Path, stop_round: int, resume: bool = False
) -> dict[str, Any]:
    cfg_file = run_dir / "sim.yaml"
    cfg_file.write_text(yaml.safe_dump(sim.to_yaml_dict()), encoding="utf-8")
    transport = LocalTransport(cfg_file, run_dir, len(sim.names))
    runner = RoundRunner(sim.federation, run_dir, transport, resume=resume)
    if not stop_round:
        return runner.run()
    for r in range(1, stop_round + 1):
        runner.train_round(r)
        runner.round = r
    return runner.evaluate(stop_round, final=False)


def fresh_folder(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("examples/sim-eu8.yaml"))
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json shared by all variants")
    ap.add_argument("--variant", action="append", default=[], help="NAME key=value ...")
    ap.add_argument("--centralized", action="store_true", help="also the pooled baseline")
    ap.add_argument("--stop-round", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/fed-sweep"))
    ap.add_argument("--resume", action="store_true", help="continue the runs in --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_sim_config(args.config)
    jobs = [parse_variant(v) for v in args.variant]
    if args.centralized:
        jobs.append(("centralized", {}))
    for name, overrides in jobs:
        private = {k[8:]: v for k, v in overrides.items() if k.startswith("privacy.")}
        federation = {k: v for k, v in overrides.items() if not k.startswith("privacy")}
        sim = base.with_overrides(tokenizer=str(Path(args.tokenizer).resolve()), **federation)
        if overrides.get("privacy") == "none":
            sim = replace(sim, privacy=None)
        elif private:
            held = sim.privacy.model_dump() if sim.privacy else {}
            sim = replace(sim, privacy=privacy_from_dict({**held, **private}, "--variant"))
        run_dir = args.out / name
        resume = args.resume and (run_dir / "LATEST").is_file()
        t0 = time.monotonic()
        if args.resume and (run_dir / "summary.json").is_file():
            result = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        else:
            if not resume:
                fresh_folder(run_dir)
            if name.startswith("centralized"):  # the baseline, with these overrides
                result = run_centralized(sim, run_dir, resume=resume)
            else:
                result = run_federated(sim, run_dir, args.stop_round, resume)
        line = {"name": name, **overrides, "mean_bpb": result["mean_bpb"],
                "wall_s": round(result.get("wall_s", time.monotonic() - t0))}  # fmt: skip
        for key in ("epsilon", "epsilon_central"):
            if key in result:
                line[key] = result[key]
        if not name.startswith("centralized") and "bytes_up" in result:  # a complete run
            moved = result["bytes_up"] + result["bytes_down"]
            allreduce = 4 * result["params"] * sim.federation.total_inner_steps * result["nodes"]
            line.update(bytes_moved=moved, comm_ratio=round(allreduce / moved, 1))
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
