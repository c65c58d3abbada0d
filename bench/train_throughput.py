"""Tokens/s of the `step-model train` loop against a minimal hand-written PyTorch loop.

Both train the same model (preset), on batches of the same shape, with the same AdamW settings
and gradient clipping; the minimal loop reuses one random batch and does nothing else. The
trainer is timed from its progress callback, so everything it does per step (batch sampling,
learning-rate schedule, metrics.jsonl, progress) counts; only the final evaluation does not.
The two alternate (minimal, trainer, minimal, trainer, ...) so that drift in machine speed hits
both, and the best of the rounds is compared.

    python bench/train_throughput.py [--preset debug] [--batch-size 64] [--seq-len 256]

Prints one JSON line: tokens/s of each and the ratio trainer / minimal (goal >= 0.97).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from step_model.config import preset
from step_model.model import Transformer, autocast, next_token_loss
from step_model.train import Trainer, pick_device
from step_model.train_config import TrainConfig


def minimal_loop(
    preset_name: str, vocab: int, batch: int, seq: int, steps: int, device: torch.device
) -> float:
    """The smallest honest training loop: tokens/s over ``steps`` after 3 warmup steps."""
    torch.manual_seed(0)
    model = Transformer(preset(preset_name).with_vocab(vocab)).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True
    )
    x = torch.randint(0, vocab, (batch, seq), device=device)
    y = torch.randint(0, vocab, (batch, seq), device=device)

    def step() -> None:
        with autocast(device):
            loss = next_token_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the trainer reads the loss every step too

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq / (time.perf_counter() - t0)


def trainer_loop(
    preset_name: str, batch: int, seq: int, steps: int, corpus: str | None, device: str
) -> float:
    """tokens/s of the Trainer between its 3rd step and its last, timed by its own callback."""
    cfg = TrainConfig.model_validate(
        {"preset": preset_name, "corpus": corpus, "languages": "eu", "steps": steps + 3,
         "batch_size": batch, "seq_len": seq, "checkpoint_every": 10**9, "device": device}
    )  # fmt: skip
    stamps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        trainer.evaluate = lambda max_tokens: {}  # type: ignore[method-assign]  # not timed
        trainer.run(progress=lambda step, stats: stamps.__setitem__(step, time.perf_counter()))
    return steps * batch * seq / (stamps[steps + 3] - stamps[3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="debug")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    vocab = 259  # the trainer's default byte tokenizer
    minimal, ours = [], []
    for _ in range(args.rounds):
        minimal.append(
            minimal_loop(args.preset, vocab, args.batch_size, args.seq_len, args.steps, device)
        )
        ours.append(
            trainer_loop(
                args.preset, args.batch_size, args.seq_len, args.steps, args.corpus, str(device)
            )
        )
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "preset": args.preset,
                "batch": args.batch_size,
                "seq_len": args.seq_len,
                "device": str(device),
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "minimal_tokens_per_s": [round(v) for v in minimal],
                "trainer_tokens_per_s": [round(v) for v in ours],
                "ratio_best": round(max(ours) / max(minimal), 4),
                "ratio_median": round(
                    sorted(ours)[len(ours) // 2] / sorted(minimal)[len(minimal) // 2], 4
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
