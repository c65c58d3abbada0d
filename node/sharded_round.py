"""One round of the node's inner loop on its torchrun workers: node/trainer.py's ``train_round``
with the model, its gradients and the AdamW state sharded (node/sharded.py).

Every worker runs this function together (each call inside is a collective or the same on all):

  1. the model is built empty and sharded; worker 0 decodes the received global weights and
     they are scattered into the shards; each worker keeps a copy of its shard (the base);
  2. the inner AdamW state of the round before is read from the node's state folder (saved per
     shard, resharded to this many workers); the data position comes with it;
  3. H steps on the same batches as one device would draw (``LanguageMixture`` at the node's
     step), each worker on its rows; or, under local DP, H DP-SGD steps of the node
     (node/sharded_dp.py: Poisson draws over the whole data, noise once per step);
  4. the pseudo-gradient per shard, gathered to worker 0 one tensor at a time, where error
     feedback and the encoding run tensor by tensor (trainer.py ``feedback_one``): worker 0
     holds the encoded update and the new residual, no other whole copy of the model;
  5. the state is saved: every worker writes its shard of the AdamW state into a temporary
     folder, then worker 0 adds the data position and the residual and renames it into place
     (node/state.py ``begin``/``commit``): a worker killed at any moment leaves the state of
     the round before, from which the round is trained again to the same bits.

Not yet on workers: drift correction (refused with the fix).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from node.data import NodeData
from node.dp_trainer import expected_tokens, make_records
from node.memory_plan import FILL, device_bytes, step_memory
from node.sharded import (
    all_finite,
    empty_sharded,
    gathered_update,
    load_global,
    load_one_device_optimizer,
    load_optimizer,
    local_shards,
    save_optimizer,
    sharded_steps,
    worker_mesh,
)
from node.sharded_dp import WorkerDP, sharded_dp_steps
from node.state import SHARDED, InnerState, NodeStateStore
from node.trainer import (
    RoundResult,
    TrainingDiverged,
    Weights,
    feedback_one,
    inner_lrs,
    mean_finite,
    model_config,
    model_sha,
    model_shapes,
    node_seed,
    seen_only,
)
from step_common.errors import StepError
from step_fed.protocol import SEEN_ROWS, RoundConfig
from step_fed.update_codec import decode, encode, lossy
from step_model.config import ModelConfig
from step_model.data import LanguageMixture
from step_model.model import Transformer
from step_model.tokenizer import Tokenizer
from step_model.train import make_optimizer


def sharded_round(
    name: str,
    data: NodeData,
    tokenizer: Tokenizer,
    cfg: RoundConfig,
    received: Callable[[], Weights] | None,
    store: NodeStateStore,
    device: torch.device,
    precision: str = "auto",
    checkpointing: bool = False,
    sharding: str = "full_shard",
    private: WorkerDP | None = None,
) -> RoundResult | None:
    """The round on every worker; ``received`` reads the global weights (the message's
    arrays) on worker 0 only, which alone gets the result (the others None): a function, so
    that nothing holds them once they are in the shards. ``precision`` auto: bf16 on GPUs,
    fp32 on the CPU; ``checkpointing``: recompute activations (node/sharded.py ``shard``);
    ``sharding`` full_shard (FSDP2), replicate (every worker the whole model) or auto
    (replicate when the whole model and its step fit one device, node/memory_plan.py).
    ``private``: DP-SGD with these settings and secret seed (the same on every worker); its
    compute stays fp32 (node/sharded_dp.py)."""
    if cfg.drift_correction:
        raise StepError(
            "drift correction does not run on torchrun workers yet: set drift_correction: "
            "false in the federation, or train this node on one device (resources.gpus: 1)"
        )
    t0 = time.perf_counter()
    lead = dist.get_rank() == 0
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and private is None else "fp32"
    if private is not None and checkpointing:
        raise StepError(
            "DP-SGD on torchrun workers cannot recompute activations (Opacus' ghost clipping "
            "would see each block's forward twice): set resources.activation_checkpointing: false"
        )
    if private is not None and precision != "fp32":
        raise StepError(
            "DP-SGD on torchrun workers computes in fp32 (ghost clipping's norms and the "
            "gradients they clip must round alike): set resources.precision: auto or fp32"
        )
    config = model_config(cfg)
    if sharding == "auto":
        fits = _fits_whole(config, cfg, device, precision, checkpointing)
        sharding = "replicate" if fits else "full_shard"
    mesh = worker_mesh(device, replicate=sharding == "replicate")
    model = empty_sharded(config, mesh, device, precision, checkpointing)
    whole = None
    if lead and received is not None:
        whole = decode(received(), cfg.broadcast_encoding, model_shapes(cfg))
    load_global(model, whole)
    del whole
    base = local_shards(model)
    model.train()
    optimizer = make_optimizer(model, cfg.inner_lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    state = _state_before(store, cfg.round)
    sha = model_sha(cfg)
    _restore(model, optimizer, state, sha)
    if private is None:
        trained = _plain(model, optimizer, data, tokenizer, cfg, name, state.node_step)
    else:
        trained = _private(model, optimizer, data, tokenizer, cfg, private)
    tokens, counts, losses = trained
    seen = None if counts is None else counts > 0
    update, residual = _encoded(model, base, cfg, state, sha, seen)
    _save(store, model, optimizer, InnerState(cfg.round, state.node_step + cfg.inner_steps,
                                              None, sha, None, residual))  # fmt: skip
    if not lead:
        return None
    counts = None if counts is None else counts.to(torch.int32)
    return RoundResult(update, tokens, counts, mean_finite(losses), time.perf_counter() - t0)


_Trained = tuple[dict[str, int], torch.Tensor | None, list[float]]
"""Tokens per language, (vocab,) target counts (None under DP), each step's loss."""


def _plain(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    data: NodeData,
    tokenizer: Tokenizer,
    cfg: RoundConfig,
    name: str,
    node_step: int,
) -> _Trained:
    """H AdamW steps on the batches one device would draw at the node's step."""
    mixture = LanguageMixture(
        data.train, cfg.seq_len, cfg.alpha, tokenizer.bos_id, node_seed(cfg.seed, name)
    )
    draws = [mixture.batch(node_step + h, cfg.batch_size) for h in range(cfg.inner_steps)]
    losses = sharded_steps(model, optimizer, [(x, y) for x, y, _ in draws], inner_lrs(cfg),
                           cfg.grad_clip)  # fmt: skip
    bad = [h for h, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        raise TrainingDiverged(
            f"node {name}: loss became {losses[bad[0]]} at inner step {bad[0]} of round "
            f"{cfg.round}: lower the inner lr"
        )
    tokens = {lang: int(sum(int(d[2][i]) for d in draws)) for i, lang in enumerate(mixture.langs)}
    counts = torch.zeros(tokenizer.vocab_size, dtype=torch.int64)
    for _, y, _ in draws:
        counts += torch.bincount(y.reshape(-1), minlength=tokenizer.vocab_size)
    return tokens, counts, losses


def _private(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    data: NodeData,
    tokenizer: Tokenizer,
    cfg: RoundConfig,
    private: WorkerDP,
) -> _Trained:
    """H DP-SGD steps of the node; as on one device (trainer.py ``_private_steps``) it
    reports the expected tokens and no per-token counts, which would depend on the draws."""
    records = make_records(data.train, cfg.seq_len)
    losses = sharded_dp_steps(model, optimizer, records, private.settings, inner_lrs(cfg),
                              tokenizer.bos_id, private.seed)  # fmt: skip
    if not all_finite(model):
        raise TrainingDiverged(
            f"DP-SGD diverged in round {cfg.round} (non-finite weights): lower the inner lr"
        )
    return expected_tokens(records, private.settings, cfg.inner_steps), None, losses


def _fits_whole(
    config: ModelConfig, cfg: RoundConfig, device: torch.device, precision: str, checkpointing: bool
) -> bool:
    """Whether each worker can hold the whole model, its gradients and AdamW state and the
    step on its rows (the memory plan, node/memory_plan.py)."""
    world = dist.get_world_size()
    plan = step_memory(config, world, cfg.batch_size, cfg.seq_len, precision, checkpointing,
                       shards=1)  # fmt: skip
    return plan.total <= FILL * device_bytes(device, world)[0]


def _state_before(store: NodeStateStore, round_: int) -> InnerState:
    """The state of the round before, its checksums read once for the node (by worker 0, not
    by every worker: at 1b that is ~10 GB read per worker); a failure on any worker is raised
    on all of them, so none waits in a collective for the others."""
    state, error = None, None
    try:
        state = store.latest_before(round_, verify=dist.get_rank() == 0)
    except StepError as exc:
        error = str(exc)
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [e for e in errors if e is not None]
    if failed:
        raise StepError(failed[0])
    assert state is not None
    return state


def _restore(
    model: Transformer, optimizer: torch.optim.Optimizer, state: InnerState, sha: str
) -> None:
    """The AdamW state of the round before, if it belongs to this model."""
    if state.model_sha != sha:
        return
    if state.sharded is not None:
        load_optimizer(model, optimizer, state.sharded)
    elif state.optimizer is not None:  # the node trained on one device before
        load_one_device_optimizer(model, optimizer, state.optimizer)


def _encoded(
    model: Transformer,
    base: Weights,
    cfg: RoundConfig,
    state: InnerState,
    sha: str,
    seen: torch.Tensor | None,
) -> tuple[Weights, Weights | None]:
    """(encoded update, residual to keep) on worker 0, built one gathered tensor at a time;
    ({}, None) on the others, which only take part in the gathers."""
    quantised = lossy(cfg.update_encoding)
    carried = state.residual if quantised and state.model_sha == sha else None
    names = SEEN_ROWS[cfg.seen_rows] if seen is not None else ()  # under DP: every row
    encoded: Weights = {}
    residual: Weights = {}
    for name, delta in gathered_update(model, base):
        rows = seen if name in names else None
        if quantised:
            held = None if carried is None else carried[name]
            encoded.update(feedback_one(name, delta, held, rows, cfg.update_encoding))
            residual[name] = delta
        else:
            encoded.update(encode(seen_only({name: delta}, rows, (name,)), cfg.update_encoding))
    return encoded, (residual if quantised and dist.get_rank() == 0 else None)


def _save(
    store: NodeStateStore,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    state: InnerState,
) -> None:
    """Every worker's shard of the AdamW state, then worker 0's commit of the whole state."""
    folder = [store.begin(state.round) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(folder, src=0)
    tmp = folder[0]
    assert tmp is not None
    save_optimizer(model, optimizer, tmp / SHARDED)
    dist.barrier()
    if dist.get_rank() == 0:
        store.commit(tmp, state)
    dist.barrier()
