"""The node's local (inner) trainer: H AdamW steps from the global weights, then the update.

One round (DiLoCo's inner loop):
  1. load the global weights theta_t into a fresh model; restore the node's inner AdamW state;
  2. H steps of ``step_model.train.train_step`` on batches of the node's own languages, with the
     learning rate of the *global* step (round - 1) * H + h on the federation's cosine schedule;
  3. reply with the pseudo-gradient  delta = theta_t - theta_local  (what an outer optimizer
     treats as a gradient), tokens per language and the mean loss.

With a quantised update encoding (int8, int4, int2) the node keeps what rounding lost (error
feedback): it sends  delta + residual  and keeps  residual' = sent - decode(encode(sent)),  so
that no part of its update is lost for good, only delayed by a round. The residual is saved
with the inner state.

Batches come from ``LanguageMixture`` seeded by (federation seed, node index) at the node's own
step counter, which persists with the optimizer state (state.py). With local differential
privacy (``privacy`` in the node's settings) step 2 is DP-SGD instead (dp_trainer.py).

The node trains on its own device (``resources.device`` in node.yaml: a GPU when it has one):
the model and each batch live there, the update and the saved state come back to host memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass

import torch

from node.data import NodeData
from node.dp_trainer import DPSettings, Records, dp_steps, expected_tokens
from node.sharded import load_optimizer
from node.state import InnerState, NodeStateStore
from step_common.errors import StepError
from step_fed.protocol import SEEN_ROWS, RoundConfig
from step_fed.update_codec import decode, decode_one, encode, lossy
from step_model.config import ModelConfig
from step_model.data import LanguageMixture
from step_model.evaluate import language_nll
from step_model.model import Transformer
from step_model.tokenizer import Tokenizer
from step_model.train import lr_at, make_optimizer, train_step

Weights = dict[str, torch.Tensor]
CPU = torch.device("cpu")


@dataclass
class RoundResult:
    update: dict[str, torch.Tensor]
    """theta_global - theta_local (plus the residual carried over from earlier rounds' rounding,
    with a quantised encoding), in the round's update encoding: what the node sends."""
    tokens_per_language: dict[str, int]
    token_counts: torch.Tensor | None
    """(vocab,) int32: how often each token id was a target this round (None under DP)."""
    mean_loss: float
    wall_s: float


class TrainingDiverged(StepError):
    pass


def model_sha(cfg: RoundConfig) -> str:
    """Identifies model shape + tokenizer: inner optimizer state only carries over within one."""
    return hashlib.sha256((cfg.model_json + cfg.tokenizer_sha256).encode()).hexdigest()[:16]


def model_config(cfg: RoundConfig) -> ModelConfig:
    """The round's model shape, as the coordinator sent it."""
    return ModelConfig.from_dict(json.loads(cfg.model_json), source="round config")


def model_shapes(cfg: RoundConfig) -> dict[str, torch.Size]:
    """The parameter shapes of the round's model (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in Transformer(model_config(cfg)).state_dict().items()}


def build_model(
    cfg: RoundConfig, received: dict[str, torch.Tensor], device: torch.device = CPU
) -> tuple[Transformer, Weights]:
    """The model on ``device`` with the global weights as received (decoded from the broadcast
    encoding); returns the model and those weights (fp32, host memory), from which the update
    is measured."""
    torch.manual_seed(cfg.seed)
    model = Transformer(model_config(cfg))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    weights = decode(received, cfg.broadcast_encoding, shapes)
    model.load_state_dict(weights, strict=True)
    return model.to(device), weights


def node_seed(seed: int, name: str) -> int:
    """A per-node data seed: the federation seed mixed with the institution's name."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


@dataclass(frozen=True)
class PrivateRound:
    """What a DP-SGD round needs beyond the round config (node/dp_trainer.py)."""

    records: Records
    settings: DPSettings
    generator: torch.Generator


def train_round(
    name: str,
    data: NodeData,
    tokenizer: Tokenizer,
    cfg: RoundConfig,
    received: dict[str, torch.Tensor],
    store: NodeStateStore,
    private: PrivateRound | None = None,
    device: torch.device = CPU,
) -> RoundResult:
    t0 = time.perf_counter()
    model, weights = build_model(cfg, received, device)
    model.train()
    optimizer = make_optimizer(model, cfg.inner_lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    state = store.latest_before(cfg.round)
    sha = model_sha(cfg)
    if state.model_sha == sha:
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
        elif state.sharded is not None:  # saved by torchrun workers: read into one device
            load_optimizer(model, optimizer, state.sharded)
    lrs = inner_lrs(cfg)
    if private is None:
        steps = _plain_steps(name, model, optimizer, data, tokenizer, cfg, state, weights, lrs)
    else:
        steps = _private_steps(model, optimizer, tokenizer, cfg, private, lrs)
    start = {k: v.clone() for k, v in weights.items()} if cfg.drift_correction else weights
    delta = pseudo_gradient(weights, model)
    control = {"global": start, "delta": delta, "lr_mass": sum(lrs)}
    if cfg.drift_correction:  # the update below consumes delta: keep it for the next round
        control["delta"] = {k: v.clone() for k, v in delta.items()}
    seen = None if steps.token_counts is None else steps.token_counts > 0
    names = SEEN_ROWS[cfg.seen_rows] if seen is not None else ()
    update, residual = with_error_feedback(cfg.update_encoding, delta, state, sha, seen, names)
    store.save(
        InnerState(
            cfg.round,
            state.node_step + cfg.inner_steps,
            optimizer.state_dict(),
            sha,
            control if cfg.drift_correction else None,
            residual,
        )
    )
    return RoundResult(
        update,
        steps.tokens,
        steps.token_counts,
        mean_finite(steps.losses),
        time.perf_counter() - t0,
    )


def inner_lrs(cfg: RoundConfig) -> list[float]:
    """The learning rate of each inner step: that of its global step on the federation's
    schedule."""
    total = cfg.total_steps or cfg.total_rounds * cfg.inner_steps
    offset = cfg.step_offset if cfg.step_offset >= 0 else (cfg.round - 1) * cfg.inner_steps
    return [
        lr_at(offset + h, peak=cfg.inner_lr, warmup=cfg.warmup_steps, total=total,
              min_ratio=cfg.min_lr_ratio)
        for h in range(cfg.inner_steps)
    ]  # fmt: skip


def mean_finite(losses: list[float]) -> float:
    """The mean of the finite losses (nan if none is)."""
    finite = [x for x in losses if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else float("nan")


def pseudo_gradient(weights: Weights, model: Transformer) -> Weights:
    """theta_global - theta_local, computed in place in ``weights`` (the round's own copy of the
    global weights in host memory, not needed after): no second fp32 model on the host. On a
    GPU one parameter at a time is copied back. Same bits as ``weights[k] - local[k]``."""
    with torch.no_grad():
        for name, local in model.state_dict().items():
            weights[name].sub_(local.float().cpu())
    return weights


def with_error_feedback(
    encoding: str,
    delta: Weights,
    state: InnerState,
    sha: str,
    seen: torch.Tensor | None = None,
    names: tuple[str, ...] = (),
) -> tuple[Weights, Weights | None]:
    """(encoded update to send, residual to keep): with a quantised encoding the update carries
    the residual of earlier rounds, and the new residual is what encoding it rounded away.

    Consumes ``delta``: one tensor at a time, the residual is written into its memory (a node
    holds no second and third fp32 model while it encodes). ``seen`` (vocab,) bool, ``names``:
    of these tensors send only the rows of the tokens seen (round config ``seen_rows``); the
    other rows' change this round is dropped (the coordinator would weigh it 0), and their
    residual waits for a round in which the token is seen."""
    if not lossy(encoding):
        return encode(seen_only(delta, seen, names), encoding), None
    carried = state.residual if state.model_sha == sha else None
    encoded: Weights = {}
    for name, sent in delta.items():
        held = None if carried is None else carried[name]
        rows = seen if seen is not None and name in names else None
        encoded.update(feedback_one(name, sent, held, rows, encoding))
    return encoded, delta


def feedback_one(
    name: str,
    sent: torch.Tensor,
    held: torch.Tensor | None,
    rows: torch.Tensor | None,
    encoding: str,
) -> Weights:
    """Error feedback for one tensor of a quantised update: adds the ``held`` residual to
    ``sent`` and encodes it (only ``rows``, a (vocab,) bool, if given); ``sent`` becomes the new
    residual in place (unsent rows keep what they held). Returns the encoded arrays."""
    if held is not None:
        sent.add_(held)
    wire = sent if rows is None else sent[rows]
    one = encode({name: wire}, encoding)
    lost = wire.sub_(decode_one(one, encoding, name, wire.shape))
    if rows is not None:  # unseen rows keep what they held; seen rows what was lost now
        sent[rows] = lost
        sent[~rows] = 0.0 if held is None else held[~rows]
    return one


def seen_only(update: Weights, seen: torch.Tensor | None, names: tuple[str, ...]) -> Weights:
    """The update with only the ``seen`` rows of the tensors ``names``."""
    if seen is None or not names:
        return update
    return {**update, **{name: update[name][seen] for name in names}}


@dataclass
class _Steps:
    losses: list[float]
    tokens: dict[str, int]
    token_counts: torch.Tensor | None


def _plain_steps(
    name: str,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    data: NodeData,
    tokenizer: Tokenizer,
    cfg: RoundConfig,
    state: InnerState,
    weights: Weights,
    lrs: list[float],
) -> _Steps:
    """H AdamW steps on batches of the node's language mixture (no privacy)."""
    device = next(model.parameters()).device
    correction = drift_correction(cfg, state, weights)
    if correction is not None:
        correction = {k: v.to(device) for k, v in correction.items()}
    mixture = LanguageMixture(
        data.train, cfg.seq_len, cfg.alpha, tokenizer.bos_id, node_seed(cfg.seed, name)
    )
    losses: list[float] = []
    tokens = dict.fromkeys(mixture.langs, 0)
    vocab = tokenizer.vocab_size
    token_counts = torch.zeros(vocab, dtype=torch.int64)
    for h, lr in enumerate(lrs):
        x, y, counts = mixture.batch(state.node_step + h, cfg.batch_size)
        loss = train_step(model, optimizer, x.to(device), y.to(device), cfg.grad_clip, lr)
        if correction is not None:
            with torch.no_grad():
                for key, p in model.named_parameters():
                    p.add_(correction[key], alpha=-lr)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"node {name}: loss became {loss} at inner step {h} of round "
                f"{cfg.round}: lower the inner lr"
            )
        losses.append(loss)
        for lang, n in zip(mixture.langs, counts, strict=True):
            tokens[lang] += int(n)
        token_counts += torch.bincount(y.reshape(-1), minlength=vocab)
    return _Steps(losses, tokens, token_counts.to(torch.int32))


def _private_steps(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    tokenizer: Tokenizer,
    cfg: RoundConfig,
    private: PrivateRound,
    lrs: list[float],
) -> _Steps:
    """H DP-SGD steps. What the node reports must not depend on which sequences were drawn:
    tokens per language are the expected counts (H x q x sequences x T, from how much text the
    node holds), and no per-token counts are sent (they would reveal which tokens it saw)."""
    losses = dp_steps(
        model, optimizer, private.records, private.settings, lrs, tokenizer.bos_id,
        private.generator,
    )  # fmt: skip
    tokens = expected_tokens(private.records, private.settings, len(lrs))
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise TrainingDiverged(
            f"DP-SGD diverged in round {cfg.round} (non-finite weights): lower the inner lr"
        )
    return _Steps(losses, tokens, None)


def drift_correction(cfg: RoundConfig, state: InnerState, weights: Weights) -> Weights | None:
    """Per unit of learning rate: (last round's global mean update - this node's own update).

    With FedAvg, theta_t = theta_{t-1} - mean(delta), so the mean update is the difference of
    the two global models this node received. Adding lr * (mean - own) at every inner step keeps
    the node moving with the federation instead of drifting to its own languages (SCAFFOLD's
    control variates, option II, in update space); summed over nodes the corrections cancel.
    None when the node did not take part in the previous round (no estimate of its own update).
    """
    control = state.control
    if not cfg.drift_correction or control is None or state.round != cfg.round - 1:
        return None
    prev, own, mass = control["global"], control["delta"], float(control["lr_mass"])
    return {k: ((prev[k] - weights[k]) - own[k]) / mass for k in weights}


def evaluate_round(
    data: NodeData,
    tokenizer: Tokenizer,
    cfg: RoundConfig,
    received: dict[str, torch.Tensor],
    device: torch.device = CPU,
) -> dict[str, tuple[float, int]]:
    """{lang: (summed NLL in nats, bytes predicted)} over the node's held-out text."""
    model, _ = build_model(cfg, received, device)
    model.eval()
    token_bytes = tokenizer.token_bytes()
    max_tokens = cfg.eval_max_tokens or None
    return {
        lang: language_nll(
            model,
            stream,
            token_bytes,
            seq_len=cfg.seq_len,
            bos_id=tokenizer.bos_id,
            max_tokens=max_tokens,
        )
        for lang, stream in sorted(data.valid.items())
    }
