"""Peak memory of a node's round against the model size: what an institution's host must hold.

Each cell runs in a fresh process: the real ``node.trainer.train_round`` (build the model from
the received global weights, H inner AdamW steps, the pseudo-gradient, error feedback and the
encoded update, the inner state saved) for two rounds, so round 2 also loads the saved AdamW
state and the carried residual. The received weights are fp32, as a fresh node or a resync
gets them. Batches are drawn from real text of the corpus (one language, byte tokenizer: 259
rows, so the presets' parameter counts are those without the BPE embedding and head rows).
The process reports its peak resident memory (``ru_maxrss``) above what it held before the
received weights existed (the interpreter and torch), as a multiple of the fp32 model's bytes.

    python bench/node_memory.py [--presets small,base,1b] [--encoding int8] [--steps 1]

On the CPU everything is host memory: the model, its gradients and AdamW's two moments (4x
the model while a step runs) plus the received global weights (1x), from which the update is
measured. On a GPU the first four live on the device and the host holds the received weights,
the update being encoded and the residual (node/trainer.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cell(preset: str, encoding: str, steps: int, corpus: Path) -> dict[str, Any]:
    """Two rounds of ``train_round``; the peak after each, above the bare process."""
    import torch

    from node.data import NodeData
    from node.state import NodeStateStore
    from node.trainer import model_config, train_round
    from step_common.malloc import return_freed_memory
    from step_fed.protocol import RoundConfig
    from step_model.checkpoint import seeded_weights
    from step_model.config import preset as model_preset
    from step_model.data import tokenize_texts
    from step_model.tokenizer import ByteTokenizer

    torch.set_num_threads(2)
    return_freed_memory()  # as the node's ClientApp does
    tokenizer = ByteTokenizer()
    text = (corpus / "train" / "de.txt").read_text(encoding="utf-8")[:200_000]
    data = NodeData(train=tokenize_texts({"de": text}, tokenizer), valid={})
    config = model_preset(preset).with_vocab(tokenizer.vocab_size)
    cfg = RoundConfig(
        round=1, total_rounds=2, inner_steps=steps, inner_lr=1e-4, min_lr_ratio=0.1,
        warmup_steps=0, weight_decay=0.0, beta1=0.9, beta2=0.95, grad_clip=1.0, batch_size=1,
        seq_len=64, alpha=0.3, seed=0, update_encoding=encoding,
        model_json=json.dumps(config.to_dict()), tokenizer=tokenizer.to_json(),
        tokenizer_sha256="bench",
    )  # fmt: skip
    before = rss_mib()
    model_bytes = 4 * sum(p.numel() for p in _shapes(model_config(cfg)).values())
    peaks, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = NodeStateStore(Path(tmp))
        for r in (1, 2):
            received = seeded_weights(config, r)  # what a message brings: the node's to use
            t0 = time.monotonic()
            train_round("bench", data, tokenizer, cfg.model_copy(update={"round": r}), received,
                        store)  # fmt: skip
            del received
            seconds.append(round(time.monotonic() - t0, 1))
            peaks.append(rss_mib() - before)
    return {"preset": preset, "encoding": encoding, "model_mib": round(model_bytes / 2**20, 1),
            "peak_mib": [round(p) for p in peaks],
            "ratio": [round(p * 2**20 / model_bytes, 2) for p in peaks],
            "s": seconds}  # fmt: skip


def _shapes(config: Any) -> dict[str, Any]:
    """The model's tensors without allocating them (meta device)."""
    import torch

    from step_model.model import Transformer

    with torch.device("meta"):
        return dict(Transformer(config).state_dict())


def run_cell(preset: str, encoding: str, steps: int, corpus: Path) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--cell", preset, encoding, str(steps), str(corpus)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"killed (exit {done.returncode})"])[-1]
        return {"preset": preset, "error": why}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small,base")
    p.add_argument("--encoding", default="int8")
    p.add_argument("--steps", type=int, default=1, help="inner steps per round")
    p.add_argument("--corpus", type=Path, default=Path("../shared/corpus/step35"))
    p.add_argument("--cell", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        preset, encoding, steps, corpus = args.cell
        print(json.dumps(cell(preset, encoding, int(steps), Path(corpus))))
        return
    print(f"updates: {args.encoding}, {args.steps} inner step(s) per round, batch 1 x 64")
    print("| preset | fp32 model MiB | peak MiB round 1 / 2 | peak / model round 1 / 2 | s |")
    print("|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = run_cell(preset, args.encoding, args.steps, args.corpus)
        if "error" in r:
            print(f"| {preset} | - | failed: {r['error']} | | |", flush=True)
            continue
        peaks = " / ".join(f"{x:,}" for x in r["peak_mib"])
        ratios = " / ".join(f"{x}x" for x in r["ratio"])
        secs = " / ".join(str(x) for x in r["s"])
        print(f"| {preset} | {r['model_mib']:,} | {peaks} | {ratios} | {secs} |", flush=True)


if __name__ == "__main__":
    main()
