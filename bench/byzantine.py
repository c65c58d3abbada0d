"""One bad institution must not wreck the shared model: final bpb of a clean federation, of
attacked ones with the plain mean, and of attacked ones with each robust rule, side by side.

    python bench/byzantine.py --tokenizer T.json [--config examples/sim-eu8.yaml] \\
        [--attacks signflip gaussian nan] [--rules mean trimmed_mean median norm_clip] \\
        [--rounds 10] [--inner-steps 20] [--out DIR]

The federation is the config's 8 institutions, shortened to ``--rounds`` x ``--inner-steps``
(updates in fp32, in-process transport, one torch thread). Two of them are malicious: they
train honestly, then replace their update before it leaves (each run starts from scratch):

- ``signflip``: -10 x their honest update;
- ``gaussian``: Gaussian noise with 10 x the RMS of their honest update per coordinate;
- ``nan``: their honest update with NaN in the first entry of every tensor;
- ``absent``: no update at all (the two leave): the best any rule could do against them, as
  their own languages then lose their training too.

Validation (finite values, shapes, dtypes, norm bound, round id, token claims) runs before any
rule: NaN updates are rejected there, whatever the rule. Prints one JSON line per run and a
summary: each run's mean bpb and its ratio to the clean run (goal: a robust rule within 5%).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.rounds import RoundRunner  # noqa: E402
from step_fed import protocol as P  # noqa: E402
from step_fed.transport import Extra, Kind, RawReply, Weights  # noqa: E402
from step_sim.config import SimConfig, load_sim_config  # noqa: E402
from step_sim.local_transport import LocalTransport  # noqa: E402

ATTACKERS = (1, 3)  # partition ids of the two malicious institutions


def corrupt(arrays: Weights, attack: str, generator: torch.Generator) -> Weights:
    out = {}
    for name, t in arrays.items():
        if name == P.TOKEN_COUNTS:
            out[name] = t
        elif attack == "signflip":
            out[name] = -10.0 * t
        elif attack == "gaussian":
            rms = float(t.pow(2).mean().sqrt())
            out[name] = torch.randn(t.shape, generator=generator) * (10.0 * rms)
        else:  # nan
            bad = t.clone()
            bad.view(-1)[0] = float("nan")
            out[name] = bad
    return out


class AttackedTransport:
    """The in-process transport, with the attackers' train replies replaced."""

    def __init__(self, inner: LocalTransport, attack: str) -> None:
        self.inner, self.attack = inner, attack
        self.attacker_ids = {100 + i for i in ATTACKERS}  # LocalTransport's node ids
        self.generator = torch.Generator().manual_seed(0)
        self.resent: list[str] = []

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        return self.inner.node_ids(minimum, timeout_s)

    def name_of(self, node_id: int) -> str | None:
        return self.inner.name_of(node_id)

    def send(
        self,
        kind: Kind,
        node_ids: list[int],
        weights: Weights,
        config: dict[str, Any],
        extra: Extra | None = None,
    ) -> Iterator[RawReply]:
        if self.attack == "absent" and kind == "train":  # still evaluated on all held-out text
            node_ids = [n for n in node_ids if n not in self.attacker_ids]
        for r in self.inner.send(kind, node_ids, weights, config, extra):
            if kind == "train" and r.node_id in self.attacker_ids and r.error is None:
                r.arrays = corrupt(r.arrays, self.attack, self.generator)
            yield r


def run(sim: SimConfig, run_dir: Path, attack: str | None, cache: Path) -> dict[str, Any]:
    shutil.rmtree(run_dir, ignore_errors=True)
    for name in sim.names:  # every run shares the nodes' token caches: tokenize once
        (cache / name).mkdir(parents=True, exist_ok=True)
        (run_dir / "nodes" / name).mkdir(parents=True)
        (run_dir / "nodes" / name / "tokens").symlink_to((cache / name).resolve())
    cfg_file = run_dir / "sim.yaml"
    cfg_file.write_text(yaml.safe_dump(sim.to_yaml_dict()), encoding="utf-8")
    local = LocalTransport(cfg_file, run_dir, len(sim.names))
    transport = AttackedTransport(local, attack) if attack else local
    runner = RoundRunner(sim.federation, run_dir, transport)
    summary = runner.run()
    rejected = [h["rejected"] for h in runner.history if h.get("rejected")]
    summary["rejected_rounds"] = len(rejected)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "sim-eu8.yaml")
    ap.add_argument("--tokenizer", required=True, help="a tokenizer.json shared by every run")
    ap.add_argument("--attacks", nargs="+", default=["signflip", "gaussian", "nan"],
                    help="signflip, gaussian, nan, absent")  # fmt: skip
    ap.add_argument("--rules", nargs="+", default=["mean", "trimmed_mean", "median", "norm_clip"])
    ap.add_argument("--no-clean", action="store_true", help="skip the clean run")
    ap.add_argument("--clean-rules", action="store_true", help="also robust rules, no attack")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--inner-steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/byzantine"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_sim_config(args.config).with_overrides(
        tokenizer=str(Path(args.tokenizer).resolve()),
        rounds=args.rounds,
        early_rounds=0,
        inner_steps=args.inner_steps,
        update_encoding="fp32",
        eval_every=args.rounds,
        min_nodes=4,
    )
    jobs: list[tuple[str | None, str]] = []
    if not args.no_clean:
        jobs.append((None, "mean"))
    if args.clean_rules:
        jobs += [(None, rule) for rule in args.rules if rule != "mean"]
    jobs += [(attack, rule) for attack in args.attacks for rule in args.rules]
    results = []
    for attack, rule in jobs:
        name = f"{attack or 'clean'}-{rule}"
        t0 = time.monotonic()
        sim = base.with_overrides(aggregation=rule)
        summary = run(sim, args.out / name, attack, args.out / "token-cache")
        line = {"run": name, "attack": attack, "rule": rule, "mean_bpb": summary["mean_bpb"],
                "rounds_with_rejections": summary["rejected_rounds"],
                "wall_s": round(time.monotonic() - t0)}  # fmt: skip
        results.append(line)
        print(json.dumps(line), flush=True)
    clean = next((r["mean_bpb"] for r in results if r["run"] == "clean-mean"), None)
    if clean:
        print(json.dumps({r["run"]: round(r["mean_bpb"] / clean, 4) for r in results}))


if __name__ == "__main__":
    main()
