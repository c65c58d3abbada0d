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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coordinator.config import FederationConfig, check_same_settings
from node.data import NodeData, load_node_data
from node.trainer import node_seed
from step_common.errors import StepError
from step_model.checkpoint import Checkpoint, initial_weights
from step_model.config import preset
from step_model.data import LanguageMixture
from step_model.evaluate import language_nll, mean_bpb, pooled_bpb
from step_model.model import Transformer
from step_model.run_folder import RunFolder
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


RecordFn = Callable[[dict[str, Any]], None]


def run_centralized(
    sim: SimConfig, run_dir: Path, on_record: RecordFn | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train the pooled baseline for the federation's rounds x H steps; returns the summary
    (also in ``run_dir/summary.json``; the per-round records go to ``run_dir/metrics.jsonl``
    and to ``on_record``). At every evaluation it commits a checkpoint with the optimizer, so
    a baseline of hours (``tiny`` and up) can be continued (``resume``) where it stopped, bit
    for bit: every step's batches and learning rate depend on the step alone."""
    t_start = time.monotonic()
    folder = RunFolder(run_dir, "round", digits=6)
    folder.prepare()
    folder.check_start(
        resume,
        occupied=f"{run_dir} already holds a centralized run: resume it or choose another "
        "run folder",
        empty=f"nothing to resume in {run_dir} (no checkpoint committed yet): start without "
        "--resume",
    )
    baseline = PooledBaseline(sim, run_dir)
    if resume:
        baseline.restore(folder.resume(baseline.check_same_run))
    fed = sim.federation
    for step in range(fed.step_offset(baseline.rounds + 1), fed.total_inner_steps):
        baseline.train_step(step)
        records = baseline.round_end_records(step)
        for rec in records:
            folder.log(rec)
            baseline.history.append(rec)
            if on_record:
                on_record(rec)
        wall_s = baseline.wall_before + time.monotonic() - t_start
        if any(r["kind"] == "eval" for r in records) and baseline.rounds < fed.rounds:
            folder.save(baseline.checkpoint(wall_s, with_optimizer=True))
    wall_s = baseline.wall_before + time.monotonic() - t_start
    checkpoint = folder.save(baseline.checkpoint(wall_s))
    summary = {**baseline.summary(wall_s), "checkpoint": str(checkpoint)}
    folder.write_summary(summary)
    return summary


@dataclass
class PooledData:
    """Every institution's data, each drawn by the sampler its node would use."""

    tok: Tokenizer
    nodes: dict[str, NodeData]
    mixtures: dict[str, LanguageMixture]

    @classmethod
    def load(cls, sim: SimConfig, run_dir: Path) -> PooledData:
        fed = sim.federation
        tok = load_tokenizer(fed.tokenizer)
        nodes = {s.name: load_node_data(s, tok) for s in sim.node_settings(run_dir)}
        mixtures = {
            name: LanguageMixture(
                d.train, fed.seq_len, fed.alpha, tok.bos_id, node_seed(fed.seed, name)
            )
            for name, d in nodes.items()
        }
        return cls(tok, nodes, mixtures)

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (N * batch_size, T) int64, the N institutions' step-``step`` batches in name
        order (each exactly what that node draws at that step)."""
        parts = [self.mixtures[name].batch(step, batch_size) for name in sorted(self.mixtures)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@dataclass
class PooledBaseline:
    """The model, its optimizer and the running tallies of one pooled run."""

    sim: SimConfig
    run_dir: Path
    tokens: int = 0
    train_s: float = 0.0
    """Seconds spent in training steps (evaluations excluded)."""
    rounds: int = 0
    """Federation rounds' worth of steps completed."""
    losses: list[float] = field(default_factory=list)
    """The losses of the steps since the last round's end."""
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_before: float = 0.0
    """Seconds of the run before the checkpoint it was resumed from."""

    def __post_init__(self) -> None:
        fed = self.sim.federation
        self.fed = fed
        self.data = PooledData.load(self.sim, self.run_dir)
        model_config = preset(fed.preset).with_vocab(self.data.tok.vocab_size)
        self.model = Transformer(model_config)
        # the coordinator's initial weights, exactly
        self.model.load_state_dict(
            initial_weights(model_config, self.data.tok, fed.seed, fed.init_from)
        )
        self.opt = make_optimizer(
            self.model, self.sim.baseline_lr, fed.weight_decay, (fed.beta1, fed.beta2)
        )

    def train_step(self, step: int) -> None:
        """One AdamW step on every institution's batch of ``step``, concatenated."""
        fed = self.fed
        t0 = time.perf_counter()
        x, y = self.data.batch(step, fed.batch_size)
        lr = lr_at(
            step,
            peak=self.sim.baseline_lr,
            warmup=fed.warmup_steps,
            total=fed.total_inner_steps,
            min_ratio=fed.min_lr_ratio,
        )
        loss = train_step(self.model, self.opt, x, y, fed.grad_clip, lr)
        self.train_s += time.perf_counter() - t0
        if not math.isfinite(loss):
            raise StepError(
                f"centralized baseline: loss became {loss} at step {step}: lower "
                "centralized_lr (or federation.inner_lr)"
            )
        self.tokens += x.numel()
        self.losses.append(loss)

    def round_end_records(self, step: int) -> list[dict[str, Any]]:
        """After the last step of a federation round: its train record, and its evaluation
        where the federation evaluates (every eval_every rounds, and the last); else none."""
        fed = self.fed
        if step + 1 != fed.step_offset(self.rounds + 2):
            return []
        self.rounds += 1
        loss = sum(self.losses) / len(self.losses)
        self.losses = []
        records: list[dict[str, Any]] = [
            {
                "kind": "round",
                "round": self.rounds,
                "loss": loss,
                "tokens": self.tokens,
                "nodes": len(self.data.nodes),
            }
        ]
        last = self.rounds == fed.rounds
        if last or self.rounds % fed.eval_every == 0:
            bpb = evaluate_pooled(self.model, self.data.nodes, self.data.tok, fed, final=last)
            records.append(
                {
                    "kind": "eval",
                    "round": self.rounds,
                    "bpb": bpb,
                    "mean_bpb": mean_bpb(bpb),
                    "final": last,
                }
            )
        return records

    def checkpoint(self, wall_s: float, with_optimizer: bool = False) -> Checkpoint:
        """The model after ``rounds`` rounds' worth of steps: with the optimizer and the
        tallies on the way (to resume), without at the end (the final model, to evaluate on any
        text with ``step-model eval --checkpoint`` or export like the federation's)."""
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        state = {"round": self.rounds, "mode": "centralized", "steps": self.fed.total_inner_steps,
                 "history": self.history, "federation": self.fed.to_dict(),
                 "baseline_lr": self.sim.baseline_lr, "tokens": self.tokens,
                 "train_s": self.train_s, "wall_s": wall_s}  # fmt: skip
        optimizer = self.opt.state_dict() if with_optimizer else None
        return Checkpoint(self.model.config, weights, self.data.tok, state, optimizer)

    def check_same_run(self, ckpt: Checkpoint) -> None:
        """StepError unless ``ckpt`` was committed by a baseline of these settings."""
        if ckpt.state.get("mode") != "centralized" or ckpt.optimizer is None:
            raise StepError(
                f"{self.run_dir}: its last checkpoint is not a centralized run's to continue "
                "(a federated run, or a finished baseline): choose another run folder"
            )
        check_same_settings(self.fed, ckpt.state)
        if ckpt.state.get("baseline_lr") != self.sim.baseline_lr:
            raise StepError(
                f"resume with centralized_lr {self.sim.baseline_lr}, the run started with "
                f"{ckpt.state.get('baseline_lr')}: use the original config or start a new run"
            )

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue after ``ckpt`` (check_same_run passed): weights, AdamW, tallies."""
        assert ckpt.optimizer is not None
        self.model.load_state_dict(ckpt.weights)
        self.opt.load_state_dict(ckpt.optimizer)
        self.rounds = int(ckpt.state["round"])
        self.history = list(ckpt.state["history"])
        self.tokens = int(ckpt.state["tokens"])
        self.train_s = float(ckpt.state["train_s"])
        self.wall_before = float(ckpt.state["wall_s"])

    def summary(self, wall_s: float) -> dict[str, Any]:
        final = self.history[-1]
        params = self.model.num_params()
        steps, nodes = self.fed.total_inner_steps, len(self.data.nodes)
        # What synchronous data parallelism moves: every step, every node sends its fp32 gradient
        # and receives the reduced one (model bytes x steps x nodes, each way).
        allreduce = params * 4 * steps * nodes
        return {
            "mode": "centralized",
            "rounds": self.fed.rounds,
            "nodes": nodes,
            "mean_bpb": final["mean_bpb"],
            "bpb": final["bpb"],
            "allreduce_bytes": allreduce,
            "comm_ratio": 1.0,  # it is the synchronous data parallelism the ratio is against
            "bytes_up": allreduce,
            "bytes_down": allreduce,
            "tokens": self.tokens,
            "params": params,
            "steps": steps,
            "batch": self.fed.batch_size * nodes,
            "tokens_per_s": self.tokens / self.train_s if self.train_s else 0.0,
            "wall_s": wall_s,
        }
