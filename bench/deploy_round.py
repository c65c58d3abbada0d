"""One round of a preset (default `base`) in deployment mode on loopback.

Sets up a federation exactly as an admin and two operators would (step-coord init / enroll /
start, step-node init / start: SuperLink and SuperNodes as separate processes, gRPC over TLS,
node authentication), runs one round with one inner step per node and a final evaluation, and
measures the wall time of the run, the bytes it moved, the time of each phase of the training
round (the round record's ``phase_s``, coordinator/phases.py) and the peak resident memory
(VmHWM) of every process of each side, sampled from /proc while they run.

    python bench/deploy_round.py [--preset base] [--tokenizer TOKENIZER.json]
        [--encoding fp32] [--out DIR]

The tokenizer fixes the vocabulary and hence the parameter count (default: the byte
tokenizer); the preset's own vocabulary needs a BPE of its size, e.g. 24,576 tokens for `base`
(`step-model tokenizer train --vocab-size 24576 ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from step_launch.processes import descendants, free_port
from step_model.config import preset
from step_model.model import Transformer
from step_model.tokenizer import ByteTokenizer, load_tokenizer

BIN = Path(sys.executable).parent
ROLES = ("coord", "uni-a", "uni-b")


def cli(*args: str | Path) -> str:
    done = subprocess.run([str(BIN / str(args[0])), *map(str, args[1:])], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{args[:2]} failed: {done.stderr[-2000:]}")
    return done.stdout


def peak_kib(pid: int) -> tuple[str, int] | None:
    """(program name, VmHWM in KiB) of a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    hwm = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM")), 0)
    words = [Path(a.decode(errors="replace")).name for a in argv[:2] if a]
    if not words:
        return None  # exiting (zombie): nothing left to measure
    if words[0].startswith("python") and len(words) > 1:
        name = "watchdog" if words[1] == "-I" else words[1]
    else:
        name = words[0]
    return name, hwm


class MemorySampler(threading.Thread):
    def __init__(self, roots: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.peaks = roots, {}  # type: dict[str, int], dict[str, int]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for role, root in self.roots.items():
                for pid in {root} | descendants([root]):
                    got = peak_kib(pid)
                    if got:
                        key = f"{role}: {got[0]}"
                        self.peaks[key] = max(self.peaks.get(key, 0), got[1])
            time.sleep(0.3)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: bytes)")
    ap.add_argument("--corpus", type=Path, default=Path("../shared/corpus/step35"))
    ap.add_argument("--encoding", default="fp32", choices=("fp32", "bf16", "int8"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench-deploy-round"))
    return ap.parse_args()


def down_encoding(up: str) -> str:
    return "fp32" if up == "fp32" else "bf16"


def init_federation(fed: Path, fleet: int, control: int, args: argparse.Namespace) -> None:
    """step-coord init, then the bench's settings in coordinator.yaml."""
    cli("step-coord", "init", fed, "--host", "127.0.0.1", "--preset", args.preset, "--rounds", "1",
        "--inner-steps", "1", "--min-nodes", "2", "--fleet-address", f"127.0.0.1:{fleet}",
        "--control-port", str(control))  # fmt: skip
    cfg = fed / "coordinator.yaml"
    text = cfg.read_text()
    if args.tokenizer:
        text = text.replace("tokenizer: byte ", f"tokenizer: {args.tokenizer.resolve()} ")
    text = text.replace("batch_size: 8 ", "batch_size: 2 ")
    text = text.replace("update_encoding: int8 ", f"update_encoding: {args.encoding} ")
    enc_down = down_encoding(args.encoding)
    text = text.replace("broadcast_encoding: int8-delta", f"broadcast_encoding: {enc_down}")
    cfg.write_text(text.replace("federation:\n", "federation:\n  eval_max_tokens: 2048\n"))


def init_nodes(out: Path, fed: Path, fleet: int, corpus: Path, langs: dict[str, str]) -> None:
    """step-node init for each node (one language each), and step-coord enroll it."""
    for name, lang in langs.items():
        cli("step-node", "init", out / name, "--coordinator", f"127.0.0.1:{fleet}", "--ca",
            fed / "tls" / "ca.crt", "--federation-key", fed / "tls" / "federation.pub",
            "--data", corpus.resolve())  # fmt: skip
        node_yaml = out / name / "node.yaml"
        node_yaml.write_text(
            node_yaml.read_text().replace("languages: null ", f"languages: [{lang}] ")
        )
        cli("step-coord", "enroll", name, "--public-key", out / name / "node.pub", "--dir", fed)


def run_federation(out: Path, fed: Path, nodes: list[str]) -> tuple[int, float, dict[str, int]]:
    """Start the coordinator, then the nodes once the run started; (the coordinator's exit
    code, seconds from start to its end, peak KiB per process)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {r: (out / f"{r}.log").open("wb") for r in ROLES}
    t0 = time.monotonic()
    procs["coord"] = subprocess.Popen([str(BIN / "step-coord"), "start", "--dir", str(fed)],
                                      stdout=logs["coord"], stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
    try:
        while b"started" not in (out / "coord.log").read_bytes():
            if procs["coord"].poll() is not None:
                raise SystemExit((out / "coord.log").read_text())
            time.sleep(0.5)
        for name in nodes:
            procs[name] = subprocess.Popen(
                [str(BIN / "step-node"), "start", "--dir", str(out / name)],
                stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        sampler = MemorySampler({r: p.pid for r, p in procs.items()})
        sampler.start()
        rc = procs["coord"].wait(timeout=3000)
        wall = time.monotonic() - t0
        sampler.done.set()
        sampler.join()
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=60)
    return rc, wall, sampler.peaks


def report(
    args: argparse.Namespace, fed: Path, wall: float, peaks: dict[str, int]
) -> dict[str, Any]:
    """What the run measured, with the model's size and the machine."""
    vocab = (load_tokenizer(args.tokenizer) if args.tokenizer else ByteTokenizer()).vocab_size
    status = json.loads(cli("step-coord", "status", "--dir", fed, "--json").splitlines()[-1])
    rounds = [json.loads(x) for x in (fed / "run" / "metrics.jsonl").read_text().splitlines()]
    train = next(r for r in rounds if r.get("kind") == "round")
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "params": sum(
            v.numel()
            for v in Transformer(preset(args.preset).with_vocab(vocab)).state_dict().values()
        ),
        "encoding_up": args.encoding,
        "encoding_down": down_encoding(args.encoding),
        "status": status["status"],
        "wall_s_start_to_completed": round(wall, 1),
        "round_wall_s": round(train["wall_s"], 1),
        "node_train_wall_s": train["node_wall_s"],
        "phase_s": train["phase_s"],
        "bytes_up": status["bytes_up"],
        "bytes_down": status["bytes_down"],
        "peak_rss_mib": {k: round(v / 1024) for k, v in sorted(peaks.items())},
    }


def main() -> None:
    args = parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    out = args.out.resolve()
    fleet, control = free_port(), free_port()
    fed = out / "fed"
    init_federation(fed, fleet, control, args)
    langs = {"uni-a": "el", "uni-b": "et"}
    init_nodes(out, fed, fleet, args.corpus, langs)
    rc, wall, peaks = run_federation(out, fed, list(langs))
    if rc != 0:
        raise SystemExit(f"the run failed:\n{(out / 'coord.log').read_text()}")
    print(json.dumps(report(args, fed, wall, peaks), indent=1))


if __name__ == "__main__":
    main()
