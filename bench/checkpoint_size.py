"""The coordinator's checkpoint of a large run: its size, write time, and a resume from it.

A first process runs one round of the real round loop (DiLoCo, the int8-delta broadcast so that
the nodes' view is part of the state, in-process nodes answering with real int4 updates; see
bench/coordinator_memory.py) and commits it: the checkpoint holds the weights, the outer
optimizer's momentum and the broadcast view, each as large as the model, with their SHA-256
sums. A second process resumes from it as ``step-coord start --resume`` does (verify every
hash, load, restore) and checks that it holds the same bits (content hashes of the weights,
the momentum and the view).

    python bench/checkpoint_size.py [--preset 1b] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def config(preset: str) -> Any:
    from coordinator.config import FederationConfig

    return FederationConfig.model_validate(
        {"preset": preset, "rounds": 2, "inner_steps": 1, "batch_size": 1, "seq_len": 64,
         "update_encoding": "int4", "broadcast_encoding": "int8-delta", "seen_rows": "none",
         "min_nodes": 2}
    )  # fmt: skip


def runner(preset: str, run_dir: Path, resume: bool) -> Any:
    from coordinator_memory import EncodedNodes, _shapes

    from coordinator.rounds import RoundRunner
    from step_model.config import preset as model_preset

    shapes = {k: v.shape for k, v in _shapes(model_preset(preset).with_vocab(259)).items()}
    return RoundRunner(config(preset), run_dir, EncodedNodes(2, shapes, "int4", "sorted"), resume)


def hashes(r: Any) -> dict[str, str]:
    """Content hashes of what the checkpoint must give back bit for bit."""
    from step_fed.update_codec import view_id

    assert r.broadcaster.delta is not None and r.broadcaster.delta.view is not None
    return {"weights": view_id(r.weights), "momentum": view_id(r.strategy.buffers),
            "view": view_id(r.broadcaster.delta.view)}  # fmt: skip


def write(preset: str, run_dir: Path) -> dict[str, Any]:
    from step_common.malloc import return_freed_memory

    return_freed_memory()
    r = runner(preset, run_dir, resume=False)
    r.train_round(1)
    r.round = 1
    start = time.monotonic()
    r._save()  # what the round loop does after each round
    seconds = time.monotonic() - start
    folder = next((run_dir / "checkpoints").iterdir())
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    return {"params": r.params, "write_s": round(seconds, 1), "files": files,
            "bytes": sum(files.values()), "hashes": hashes(r), "peak_mib": peak_mib()}  # fmt: skip


def resume(preset: str, run_dir: Path) -> dict[str, Any]:
    start = time.monotonic()
    r = runner(preset, run_dir, resume=True)  # verifies every file's sha256 first
    seconds = time.monotonic() - start
    return {"resume_s": round(seconds, 1), "round": r.round, "hashes": hashes(r),
            "peak_mib": peak_mib()}  # fmt: skip


def peak_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def in_process(phase: str, preset: str, run_dir: Path) -> dict[str, Any]:
    """A phase in a fresh process (so that each peak is its own, and the memory is free)."""
    argv = [sys.executable, __file__, "--phase", phase, "--preset", preset, "--out", str(run_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed: {done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="1b")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-checkpoint")
    p.add_argument("--phase", choices=["write", "resume"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        phase = write if args.phase == "write" else resume
        print(json.dumps(phase(args.preset, args.out)))
        return
    shutil.rmtree(args.out, ignore_errors=True)
    written = in_process("write", args.preset, args.out)
    resumed = in_process("resume", args.preset, args.out)
    same = written["hashes"] == resumed["hashes"]
    gib = written["bytes"] / 2**30
    print(f"{args.preset}: {written['params']:,} parameters (byte vocabulary)")
    print("| measure | value |\n|---|---|")
    for name, size in written["files"].items():
        print(f"| {name} | {size / 2**20:,.1f} MiB |")
    print(f"| checkpoint | {gib:.2f} GiB, {written['bytes'] / (4 * written['params']):.2f}x the "
          "fp32 model |")  # fmt: skip
    print(f"| write (+ sha256 of every file) | {written['write_s']} s, "
          f"{gib / written['write_s']:.2f} GiB/s |")  # fmt: skip
    print(f"| resume (verify + load + restore) | {resumed['resume_s']} s |")
    print(f"| resumed the same bits (weights, momentum, view) | {same} |")
    print(f"| peak RSS: round + write / resume | {written['peak_mib']:,} / "
          f"{resumed['peak_mib']:,} MiB |")  # fmt: skip
    if not same:
        raise SystemExit("the resumed state differs from the written one")


if __name__ == "__main__":
    main()
