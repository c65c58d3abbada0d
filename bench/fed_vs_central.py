"""Federated (DiLoCo and FedAvg) vs centralized training on the same data and token budget.

Runs, in one invocation and on the same simulation config, for each seed (``--seeds N``: the
config's seed, then the next ones; each seed changes the initial weights, the batches and the
nodes' randomness, in both runs alike):
  1. `step-sim --config C`                     the federation as configured (DiLoCo by default)
  2. `step-sim --config C --centralized`       synchronous data parallelism on the pooled data
and once, with the first seed:
  3. `step-sim --config C` with FedAvg          (skip with --no-fedavg)
and prints one JSON line: mean held-out bpb of each, federated / centralized per seed, their mean
and spread (sample standard deviation, min, max), per language (the mean over the seeds), and the
communication ratio (``comm_ratio`` of the federation's summary): the bytes synchronous data
parallelism would all-reduce for the same steps (fp32 model bytes x steps x nodes) over the
bytes the federation moved (updates up + weights, tokenizer and config down).
``<out>/fed_vs_central.png`` shows the first seed's runs: mean bpb at every evaluation and each
run's final bpb per language over the centralized one. Every run keeps its final model
(``<out>/seed-S/{federated,centralized}/LATEST``) for ``step-model eval --checkpoint`` on other
text. ``--baselines DIR`` reuses the centralized runs of an earlier bench (``DIR/seed-S``)
wherever they are the same baseline (step_sim/twin.py: the twin never reads the outer
optimizer, the encodings, the aggregation rule, nor ``inner_lr`` when ``centralized_lr`` is
set, and of the schedule only the total steps, not how they fall into rounds); a seed whose
settings differ trains its own, saying why.

    python bench/fed_vs_central.py [--config examples/sim-eu8.yaml] [--out runs/bench-fvc]
                                   [--seeds 3] [--no-fedavg] [--slow] [--baselines DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from step_common.errors import StepError
from step_sim.plot import plot_comparison
from step_sim.twin import twin_differences

FED_KEYS = ("strategy", "mean_bpb", "bytes_up", "bytes_down", "comm_ratio", "tokens", "wall_s",
            "rounds", "inner_steps")  # fmt: skip
CENTRAL_KEYS = ("mean_bpb", "tokens", "wall_s", "steps", "allreduce_bytes")


def step_sim(config: Path, out: Path, *extra: str) -> dict[str, Any]:
    exe = Path(sys.executable).parent / "step-sim"
    cmd = [str(exe), "--config", str(config), "--out", str(out), "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def with_federation(config: Path, folder: Path, tag: str, **keys: Any) -> Path:
    """A copy of ``config`` with these federation keys changed (the corpus path kept)."""
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc.setdefault("federation", {}).update(keys)
    path = folder / f"{config.stem}-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def slow_schedule(federation: dict[str, Any]) -> dict[str, int]:
    """4x the rounds of each kind (early and late, same H): exactly 4x the steps and tokens.
    (``step-sim --rounds`` would lengthen only the late phase.)"""
    return {
        "rounds": 4 * int(federation["rounds"]),
        "early_rounds": 4 * int(federation.get("early_rounds", 0)),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("examples/sim-eu8.yaml"))
    ap.add_argument(
        "--out", type=Path, default=Path("runs") / f"bench-fvc-{time.strftime('%H%M%S')}"
    )
    ap.add_argument("--seeds", type=int, default=1, help="seeds to run both trainings with")
    ap.add_argument("--no-fedavg", action="store_true")
    ap.add_argument(
        "--slow",
        action="store_true",
        help="4x the rounds, early and late (same H): 4x the tokens and 4x the time of a plain run",
    )
    ap.add_argument(
        "--baselines",
        type=Path,
        help="an earlier bench's --out: reuse its centralized run of a seed where the settings "
        "the baseline reads are the same",
    )
    return ap.parse_args()


def one_seed(
    args: argparse.Namespace, seed: int, schedule: dict[str, int]
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The federated and the centralized run of one seed: (fed summary, central, config)."""
    folder = args.out / f"seed-{seed}"
    folder.mkdir(parents=True)
    config = with_federation(args.config, folder, f"seed{seed}", seed=seed, **schedule)
    fed = step_sim(config, folder / "federated")
    central = earlier_baseline(args.baselines, seed, folder / "federated")
    if central is None:
        central = step_sim(config, folder / "centralized", "--centralized")
        central["run_dir"] = str(folder / "centralized")
    print(f"seed {seed}: federated {fed['mean_bpb']:.4f}, centralized {central['mean_bpb']:.4f}, "
          f"ratio {fed['mean_bpb'] / central['mean_bpb']:.4f}, comm {fed['comm_ratio']:.1f}x",
          file=sys.stderr, flush=True)  # fmt: skip
    return fed, central, config


def earlier_baseline(baselines: Path | None, seed: int, federated: Path) -> dict[str, Any] | None:
    """The summary of an earlier bench's centralized run of this seed, if it is the same
    baseline as ``federated``'s config would train; None: train one."""
    if baselines is None:
        return None
    twin = baselines / f"seed-{seed}" / "centralized"
    try:
        differences = twin_differences(federated, twin)
    except StepError as e:  # not a finished centralized run
        print(f"seed {seed}: {e}; training one", file=sys.stderr, flush=True)
        return None
    if differences:
        print(f"seed {seed}: the baseline in {twin} differs in {', '.join(differences)}: "
              "training one", file=sys.stderr, flush=True)  # fmt: skip
        return None
    print(f"seed {seed}: reusing the centralized run {twin}", file=sys.stderr, flush=True)
    summary = json.loads((twin / "summary.json").read_text(encoding="utf-8"))
    return {**summary, "run_dir": str(twin)}


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def compare(
    args: argparse.Namespace, runs: list[tuple[dict[str, Any], dict[str, Any], Path]]
) -> dict[str, Any]:
    """The federated runs against the centralized ones: bpb and communication ratios."""
    seeds = [int(yaml.safe_load(c.read_text())["federation"]["seed"]) for _, _, c in runs]
    ratios = [fed["mean_bpb"] / central["mean_bpb"] for fed, central, _ in runs]
    central0 = runs[0][1]
    return {
        "bench": "fed_vs_central",
        "config": str(args.config),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "seeds": seeds,
        "federated": [{k: fed[k] for k in FED_KEYS} for fed, _, _ in runs],
        "centralized": [{k: c[k] for k in CENTRAL_KEYS} for _, c, _ in runs],
        "bpb_ratio": spread(ratios),
        "bpb_ratios": ratios,
        "bpb_ratio_per_language": {  # the mean over the seeds: one seed's is mostly its twin's
            lang: round(statistics.fmean(f["bpb"][lang] / c["bpb"][lang] for f, c, _ in runs), 4)
            for lang in sorted(central0["bpb"])
        },
        "comm_ratio": spread([fed["comm_ratio"] for fed, _, _ in runs]),
        "checkpoints": {
            str(seed): {
                "federated": str(args.out / f"seed-{seed}" / "federated"),
                "centralized": central["checkpoint"],
            }
            for seed, (_, central, _) in zip(seeds, runs, strict=True)
        },
        "slow": args.slow,
        "baselines": [c["run_dir"] for _, c, _ in runs],
    }


def compare_fedavg(fed: dict[str, Any], config: Path) -> dict[str, Any]:
    """Run the first seed's config with FedAvg; its bpb against the federated run's."""
    folder = config.parent
    fedavg_config = with_federation(config, folder, "fedavg", strategy="fedavg")
    fedavg = step_sim(fedavg_config, folder / "fedavg")
    return {
        "fedavg": {"mean_bpb": fedavg["mean_bpb"], "wall_s": fedavg["wall_s"]},
        "fedavg_vs_diloco": fedavg["mean_bpb"] / fed["mean_bpb"],
    }


def main() -> None:
    args = parse_args()
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    if args.baselines and not args.baselines.is_dir():
        raise SystemExit(f"--baselines {args.baselines}: no such folder; give the --out of an "
                         "earlier fed_vs_central run")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=False)
    doc = yaml.safe_load(args.config.read_text(encoding="utf-8"))["federation"]
    first = int(doc.get("seed", 0))
    schedule = slow_schedule(doc) if args.slow else {}
    runs = [one_seed(args, first + i, schedule) for i in range(args.seeds)]
    result = compare(args, runs)
    folder = args.out / f"seed-{first}"
    curves = {"centralized": Path(runs[0][1]["run_dir"]),
              f"federated ({runs[0][0]['strategy']})": folder / "federated"}  # fmt: skip
    if not args.no_fedavg:
        result |= compare_fedavg(runs[0][0], runs[0][2])
        curves["federated (fedavg)"] = folder / "fedavg"
    metrics = {label: path / "metrics.jsonl" for label, path in curves.items()}
    title = f"{args.config.stem}: federated vs centralized, same data and tokens (seed {first})"
    result["plot"] = str(plot_comparison(metrics, args.out / "fed_vs_central.png", title))
    r, c = result["bpb_ratio"], result["comm_ratio"]
    print(f"federated / centralized bpb: mean {r['mean']:.4f} (std {r['std']:.4f}, "
          f"{r['min']:.4f}-{r['max']:.4f}, {args.seeds} seeds); communication "
          f"{c['mean']:.1f}x less; plot {result['plot']}", file=sys.stderr)  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
