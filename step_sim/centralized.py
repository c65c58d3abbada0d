"""The honest baseline: what synchronous data-parallel training across the same institutions
would reach if their data could be pooled.

Same model, preset, tokenizer, seed and initial weights as the federation; one process; every
step takes each institution's local batch (drawn exactly as that node draws it: same sampler,
same seed, same step index) and concatenates them, so a step sees N x b sequences, and the run
has rounds x H steps: the same training tokens as the federation. The optimizer is the nodes'
AdamW with the federation's inner learning-rate schedule. Evaluation reads the same held-out
slices as the nodes and aggregates them the same way (summed NLL / summed bytes per language).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from coordinator.config import FederationConfig
from node.data import NodeData, load_node_data
from node.trainer import node_seed
from step_common.errors import StepError
from step_common.fileio import append_jsonl, atomic_write_json
from step_model.checkpoint import initial_weights
from step_model.config import preset
from step_model.data import LanguageMixture
from step_model.evaluate import language_nll, mean_bpb, pooled_bpb
from step_model.model import Transformer
from step_model.tokenizer import Tokenizer, load_tokenizer
from step_model.train import lr_at, make_optimizer, train_step
from step_sim.config import SimConfig


def evaluate_pooled(
    model: Transformer,
    nodes: dict[str, NodeData],
    tok: Tokenizer,
    fed: FederationConfig,
    final: bool,
) -> dict[str, float]:
    """bpb per language over every institution's held-out slice, as the coordinator computes it."""
    token_bytes = tok.token_bytes()
    max_tokens = None if final or not fed.eval_max_tokens else fed.eval_max_tokens
    model.eval()
    parts = [
        (lang, *language_nll(model, stream, token_bytes, seq_len=fed.seq_len, bos_id=tok.bos_id,
                             max_tokens=max_tokens))
        for name in sorted(nodes)
        for lang, stream in sorted(nodes[name].valid.items())
    ]  # fmt: skip
    model.train()
    return pooled_bpb(parts)


def run_centralized(
    sim: SimConfig, run_dir: Path, on_record: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    fed = sim.federation
    t_start = time.monotonic()
    tok = load_tokenizer(fed.tokenizer)
    settings = sim.node_settings(run_dir)
    nodes = {s.name: load_node_data(s, tok) for s in settings}
    mixtures = {
        name: LanguageMixture(
            d.train, fed.seq_len, fed.alpha, tok.bos_id, node_seed(fed.seed, name)
        )
        for name, d in nodes.items()
    }
    model_config = preset(fed.preset).with_vocab(tok.vocab_size)
    model = Transformer(model_config)
    # the coordinator's initial weights, exactly
    model.load_state_dict(initial_weights(model_config, tok, fed.seed, fed.init_from))
    opt = make_optimizer(model, sim.baseline_lr, fed.weight_decay, (fed.beta1, fed.beta2))
    total = fed.total_inner_steps
    tokens = 0
    train_s = 0.0
    losses: list[float] = []
    history: list[dict[str, Any]] = []
    round_ = 0  # federation rounds completed
    for step in range(total):
        t0 = time.perf_counter()
        parts = [mixtures[name].batch(step, fed.batch_size) for name in sorted(mixtures)]
        x = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
        lr = lr_at(
            step,
            peak=sim.baseline_lr,
            warmup=fed.warmup_steps,
            total=total,
            min_ratio=fed.min_lr_ratio,
        )
        loss = train_step(model, opt, x, y, fed.grad_clip, lr)
        train_s += time.perf_counter() - t0
        if not math.isfinite(loss):
            raise StepError(
                f"centralized baseline: loss became {loss} at step {step}: lower "
                "centralized_lr (or federation.inner_lr)"
            )
        tokens += x.numel()
        losses.append(loss)
        if step + 1 == fed.step_offset(round_ + 2):  # the end of a "round" of the federation
            round_ += 1
            records = [
                {
                    "kind": "round",
                    "round": round_,
                    "loss": sum(losses) / len(losses),
                    "tokens": tokens,
                    "nodes": len(nodes),
                }
            ]
            losses = []
            last = round_ == fed.rounds
            if last or round_ % fed.eval_every == 0:
                bpb = evaluate_pooled(model, nodes, tok, fed, final=last)
                records.append(
                    {
                        "kind": "eval",
                        "round": round_,
                        "bpb": bpb,
                        "mean_bpb": mean_bpb(bpb),
                        "final": last,
                    }
                )
            for rec in records:
                append_jsonl(run_dir / "metrics.jsonl", rec)
                history.append(rec)
                if on_record:
                    on_record(rec)
    final = history[-1]
    params = model.num_params()
    summary = {
        "mode": "centralized",
        "rounds": fed.rounds,
        "nodes": len(nodes),
        "mean_bpb": final["mean_bpb"],
        "bpb": final["bpb"],
        # What synchronous data parallelism moves: every step, every node sends its fp32 gradient
        # and receives the reduced one (model bytes x steps x nodes, each way).
        "allreduce_bytes": params * 4 * total * len(nodes),
        "bytes_up": params * 4 * total * len(nodes),
        "bytes_down": params * 4 * total * len(nodes),
        "tokens": tokens,
        "params": params,
        "steps": total,
        "batch": fed.batch_size * len(nodes),
        "tokens_per_s": tokens / train_s if train_s else 0.0,
        "wall_s": time.monotonic() - t_start,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary
