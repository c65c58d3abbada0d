"""The Flower ClientApp of a node (Message API): ``train`` and ``evaluate``, and the four stages
of a secure round (``train.secagg_*``, node/secure_client.py, registered at the end).

Node settings come from the node itself (settings.py); the round config and the global weights
come from the coordinator's message. Every failure is answered with an error reply naming the
cause, so the coordinator can report it and carry on with the other nodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from node.data import NodeData, load_node_data
from node.dp_trainer import DPSettings, make_records
from node.eval_ledger import EvalLedger, EvaluationRefused
from node.keys import node_signer
from node.ledger import LedgerEntry, PrivacyBudgetExhausted, PrivacyLedger
from node.node_config import CONSOLE_PREFIX, NODE_CONFIG_KEY, load_node_file
from node.round_journal import record_round
from node.settings import NodeSettings
from node.sharded_dp import WorkerDP
from node.state import NodeStateStore
from node.trainer import (
    PrivateRound,
    RoundResult,
    TrainingDiverged,
    evaluate_round,
    model_config,
    model_shapes,
    train_round,
)
from node.view_store import StaleView, ViewStore
from node.worker_inbox import WorkerFolder
from step_common.errors import StepError
from step_common.malloc import return_freed_memory
from step_fed import protocol as P
from step_fed.identity import NodeSigner
from step_fed.secret_rng import secret_generator
from step_fed.update_codec import apply_delta, decode, view_id
from step_model.checkpoint import seeded_weights
from step_model.tokenizer import Tokenizer, tokenizer_from_json
from step_model.train import pick_device

app = ClientApp()
log = logging.getLogger("step.node")

# Per-process caches: a simulation worker serves many rounds and virtual nodes.
_TOKENIZERS: dict[str, Tokenizer] = {}
_DATA: dict[tuple[str, str], NodeData] = {}  # (repr of settings, tokenizer sha)


def node_settings(context: Context) -> NodeSettings:
    """This node's settings, from its node.yaml: the one the SuperNode names in a deployment,
    the one step-sim wrote for this partition in a simulation."""
    node_file = context.node_config.get(NODE_CONFIG_KEY)
    if node_file:
        nf = load_node_file(Path(str(node_file)))
        if nf.threads:
            torch.set_num_threads(nf.threads)
        return nf.settings
    return load_node_file(sim_node_file(context), simulated=True).settings


def sim_node_file(context: Context) -> Path:
    """A simulated node's node.yaml: ``<run config node-files>/<partition-id>.yaml``."""
    partition = context.node_config.get("partition-id")
    folder = context.run_config.get(P.RUN_NODE_FILES)
    if partition is None or not folder:
        raise StepError(
            f"this node has no settings: a deployed node passes {NODE_CONFIG_KEY!r} (step-node "
            f"start does); in a simulation the run config needs {P.RUN_NODE_FILES!r} (step-sim "
            "sets it)"
        )
    path = Path(str(folder)) / f"{partition}.yaml"
    if not path.is_file():
        raise StepError(
            f"partition-id {partition} has no node file {path}: run with as many SuperNodes "
            "as the simulation has institutions (step-sim does)"
        )
    return path


def _tokenizer(cfg: P.RoundConfig) -> Tokenizer:
    if cfg.tokenizer_sha256 not in _TOKENIZERS:
        actual = hashlib.sha256(cfg.tokenizer.encode("utf-8")).hexdigest()
        if actual != cfg.tokenizer_sha256:
            raise ValueError("the tokenizer does not match its sha256: corrupted in transit")
        _TOKENIZERS[cfg.tokenizer_sha256] = tokenizer_from_json(cfg.tokenizer, "round config")
    return _TOKENIZERS[cfg.tokenizer_sha256]


def _data(settings: NodeSettings, cfg: P.RoundConfig, tokenizer: Tokenizer) -> NodeData:
    key = (repr(settings), cfg.tokenizer_sha256)
    if key not in _DATA:
        _DATA[key] = load_node_data(settings, tokenizer)
    return _DATA[key]


def _received_bytes(msg: Message) -> int:
    """Tensor bytes and the config's text as they came (a change comes without the tokenizer)."""
    arrays = msg.content[P.ARRAYS]
    assert isinstance(arrays, ArrayRecord)
    config = msg.content[P.CONFIG]
    text = sum(len(str(config.get(k, ""))) for k in (P.CFG_TOKENIZER, P.CFG_MODEL_CONFIG))
    return arrays.count_bytes() + text


def node_info(settings: NodeSettings) -> ConfigRecord:
    return ConfigRecord({P.NODE_NAME: settings.name})


def error_reply(msg: Message, exc: Exception) -> Message:
    if isinstance(exc, PrivacyBudgetExhausted):
        code = P.ERR_PRIVACY_BUDGET
    elif isinstance(exc, StaleView):
        code = P.ERR_STALE_VIEW
    elif isinstance(exc, TrainingDiverged):
        code = P.ERR_TRAINING
    elif isinstance(exc, StepError):
        code = P.ERR_NODE_SETUP
    else:
        code = P.ERR_BAD_CONFIG
    return Message(Error(code=code, reason=str(exc)), reply_to=msg)


def _parse(msg: Message, settings: NodeSettings) -> tuple[P.RoundConfig, dict[str, torch.Tensor]]:
    """The round config and the global weights; an intN-delta change is applied to the
    weights this node kept (view_store.py), and the result is returned whole (fp32). A change
    comes without the tokenizer: the node kept it with the weights. The message's arrays are
    dropped as they become tensors (not two copies of the weights): count its bytes first."""
    config = msg.content[P.CONFIG]
    arrays = msg.content[P.ARRAYS]
    assert isinstance(arrays, ArrayRecord)
    cfg = P.RoundConfig.from_wire(dict(config))
    received = dict(arrays.to_torch_state_dict(keep_input=False))
    if not cfg.view:  # whole weights, nothing to keep
        return cfg, received
    store = ViewStore(settings.state_dir)
    if cfg.broadcast_encoding == P.SEED_BROADCAST:
        weights = seeded_weights(model_config(cfg), cfg.seed)
        if view_id(weights) != cfg.view:
            raise StaleView(
                f"node {settings.name} draws other initial weights from seed {cfg.seed} than "
                "the coordinator (another torch version?): the coordinator sends them whole"
            )
    elif cfg.broadcast_encoding.endswith(P.DELTA_SUFFIX):
        held = store.load()
        if held is not None and held[0] == cfg.view and _same_tokenizer(cfg, held[2]):
            # A message sent again after this node restarted mid-round: it applied the change
            # (and kept the result) before it went down.
            whole = {"tokenizer": cfg.tokenizer or held[2], "broadcast_encoding": "fp32",
                     "view_base": "", "view": ""}  # fmt: skip
            return cfg.model_copy(update=whole), held[1]
        if held is None or held[0] != cfg.view_base or not _same_tokenizer(cfg, held[2]):
            raise StaleView(
                f"node {settings.name} holds global weights {held[0] if held else '(none)'}; "
                f"the change applies to {cfg.view_base}: the coordinator sends them whole"
            )
        weights = apply_delta(
            held[1], received, cfg.broadcast_encoding.removesuffix(P.DELTA_SUFFIX)
        )
        cfg = cfg.model_copy(update={"tokenizer": cfg.tokenizer or held[2]})
    else:
        weights = decode(received, cfg.broadcast_encoding, model_shapes(cfg))
    if view_id(weights) != cfg.view:
        raise ValueError("the received weights do not match their id: corrupted in transit")
    store.save(cfg.view, weights, cfg.tokenizer)
    return cfg.model_copy(
        update={"broadcast_encoding": "fp32", "view_base": "", "view": ""}
    ), weights


def _same_tokenizer(cfg: P.RoundConfig, held: str) -> bool:
    """A change without a tokenizer applies only where the node kept the run's tokenizer."""
    return bool(cfg.tokenizer) or hashlib.sha256(held.encode()).hexdigest() == cfg.tokenizer_sha256


@dataclass
class Trained:
    """A round trained by this node, before its reply is made (train, or a secure round's
    masked input: node/secure_client.py)."""

    settings: NodeSettings
    cfg: P.RoundConfig
    result: RoundResult
    received: int
    """Bytes the message brought (weights and config text)."""
    spent: LedgerEntry | None
    """Local DP: the ledger's entry for this round."""
    signer: NodeSigner | None
    evaluated: dict[str, tuple[float, int]]
    """The received weights' evaluation, when the round asked for one first."""


def train_message(msg: Message, context: Context) -> Trained:
    """Train the round ``msg`` asks for; StepError or ValueError when it cannot be."""
    return_freed_memory()  # model-sized tensors freed each round go back to the system
    settings = node_settings(context)
    received = _received_bytes(msg)
    cfg, weights = _parse(msg, settings)
    tokenizer = _tokenizer(cfg)
    data = _data(settings, cfg, tokenizer)
    store = NodeStateStore(settings.state_dir)
    device = pick_device(settings.device)  # before the ledger: a failure here spends nothing
    signer = node_signer(settings.key) if settings.privacy else None  # signs DP only
    private, spent = (
        _private_round(settings, cfg, data, signer) if settings.privacy else (None, None)
    )
    evaluated = {}
    if cfg.eval_first:  # the weights of the round before, which this round trains from
        try:
            evaluated = _evaluate_once(
                settings, context, cfg.round - 1, weights,
                lambda: evaluate_round(data, tokenizer, cfg, weights, device),
            )  # fmt: skip
        except EvaluationRefused as exc:  # the training itself asks nothing of held-out text
            log.warning("%s", exc)
    if settings.workers > 1:  # the node's torchrun workers train it (node/worker_group.py)
        result = _on_workers(settings, cfg, weights, private)
    else:
        result = train_round(settings.name, data, tokenizer, cfg, weights, store, private, device)
    return Trained(settings, cfg, result, received, spent, signer, evaluated)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        done = train_message(msg, context)
    except (StepError, ValueError) as exc:
        return error_reply(msg, exc)
    result, cfg = done.result, done.cfg
    counts = {} if result.token_counts is None else {P.TOKEN_COUNTS: result.token_counts}
    arrays = ArrayRecord({**result.update, **counts})
    metrics = train_metrics(cfg, result, done.received, arrays.count_bytes(), done.spent)
    add_eval_metrics(metrics, done.evaluated)
    content = RecordDict(
        {P.ARRAYS: arrays, P.METRICS: MetricRecord(metrics), P.NODE_INFO: reply_info(done, context)}
    )
    report_trained(context, done, metrics)
    return Message(content, reply_to=msg)


def reply_info(done: Trained, context: Context) -> ConfigRecord:
    """The node's name, and under local DP its signed epsilon report."""
    info = node_info(done.settings)
    if done.spent is not None and done.signer is not None:
        report = _epsilon_report(done.settings, context, done.spent)
        info[P.EPSILON_REPORT] = report
        info[P.EPSILON_SIGNATURE] = done.signer.sign(report.encode("utf-8"))
    return info


def report_trained(context: Context, done: Trained, metrics: dict[str, Any]) -> None:
    """The round in the node's journal (step-node status) and on the operator's console."""
    spent, cfg = done.spent, done.cfg
    record_round(done.settings.state_dir, {
        "run_id": context.run_id, "round": cfg.round, "total_rounds": cfg.total_rounds,
        "steps": cfg.inner_steps, "tokens": sum(done.result.tokens_per_language.values()),
        "bytes_received": metrics[P.M_BYTES_RECEIVED], "bytes_sent": metrics[P.M_BYTES_SENT],
        "wall_s": round(done.result.wall_s, 3), "loss": done.result.mean_loss,
        "epsilon": None if spent is None else spent.epsilon,
    })  # fmt: skip
    privacy = "" if spent is None else f", epsilon {spent.epsilon:.3f} (delta {spent.delta:g})"
    say(context, f"round {cfg.round}/{cfg.total_rounds}: trained {cfg.inner_steps} steps in "
        f"{done.result.wall_s:.1f} s, received {_mb(metrics[P.M_BYTES_RECEIVED])}, sent "
        f"{_mb(metrics[P.M_BYTES_SENT])}{privacy}")  # fmt: skip


def _on_workers(
    settings: NodeSettings,
    cfg: P.RoundConfig,
    weights: dict[str, torch.Tensor],
    private: PrivateRound | None,
) -> RoundResult:
    """The round trained by the node's torchrun workers, handed over through its state folder;
    under DP with the settings the ledger charged for and a seed from the secret generator
    (every worker draws the same batches and noise from it: node/sharded_dp.py)."""
    dp = None
    if private is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=private.generator))
        dp = WorkerDP(private.settings, seed)
    reply = WorkerFolder(settings.state_dir).run_round(settings.name, cfg, weights, dp)
    counts = None if reply.token_counts is None else reply.token_counts.to(torch.int32)
    return RoundResult(reply.update, reply.tokens, counts, reply.mean_loss, reply.wall_s)


def train_metrics(
    cfg: P.RoundConfig, result: RoundResult, received: int, sent: int, spent: LedgerEntry | None
) -> dict[str, Any]:
    """A train reply's metrics: tokens, bytes, and the loss and time unless DP trained."""
    metrics: dict[str, Any] = {
        P.M_ROUND: cfg.round,
        P.M_NUM_TOKENS: sum(result.tokens_per_language.values()),
        P.M_BYTES_RECEIVED: received,
        P.M_BYTES_SENT: sent,
    }
    if spent is None:
        metrics[P.M_TRAIN_LOSS] = result.mean_loss
        metrics[P.M_WALL_S] = result.wall_s
    else:  # neither the loss on private data nor the time (it grows with the Poisson-drawn
        # batches) is covered by DP: both stay in the node's log
        log.info("round %d: DP-SGD mean loss %.4f, %.1f s", cfg.round, result.mean_loss,
                 result.wall_s)  # fmt: skip
        metrics[P.M_EPSILON] = spent.epsilon
        metrics[P.M_DELTA] = spent.delta
    for lang, n in result.tokens_per_language.items():
        metrics[P.M_TOKENS_PREFIX + lang] = n
    return metrics


def say(context: Context, line: str) -> None:
    """One line on the operator's console (a deployed node: step-node start shows it)."""
    if context.node_config.get(NODE_CONFIG_KEY):
        print(CONSOLE_PREFIX + line, flush=True)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB"


def _epsilon_report(settings: NodeSettings, context: Context, spent: LedgerEntry) -> str:
    """What the node's key signs of its spend (the coordinator keeps it with the signature)."""
    report = {"node": settings.name, "run_id": context.run_id, "round": spent.round,
              "epsilon": spent.epsilon, "delta": spent.delta}  # fmt: skip
    return json.dumps(report, sort_keys=True, separators=(",", ":"))


def _private_round(
    settings: NodeSettings, cfg: P.RoundConfig, data: NodeData, signer: NodeSigner | None
) -> tuple[PrivateRound, LedgerEntry]:
    """Check the round against the node's privacy budget and enter it in the ledger before
    any training; a round over budget is refused (and the refusal recorded)."""
    privacy = settings.privacy
    assert privacy is not None
    if cfg.drift_correction:
        raise StepError(
            f"node {settings.name} trains with local DP, which does not support "
            "federation.drift_correction: ask the coordinator admin to turn it off"
        )
    records = make_records(data.train, cfg.seq_len)
    with PrivacyLedger.locked(settings.state_dir):
        ledger = PrivacyLedger.load(settings.state_dir, settings.name, signer)
        try:
            entry = ledger.plan(privacy, cfg.round, cfg.batch_size, cfg.inner_steps, len(records))
        except PrivacyBudgetExhausted as exc:
            log.warning("%s", exc)
            ledger.refuse(cfg.round, str(exc))
            raise
        ledger.record(entry, privacy.unit(cfg.seq_len))
    dp = DPSettings(entry.noise_multiplier, privacy.max_grad_norm, cfg.batch_size, privacy.mode)
    return PrivateRound(records, dp, secret_generator()), entry


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        settings = node_settings(context)
        received = _received_bytes(msg)
        cfg, weights = _parse(msg, settings)
        tokenizer = _tokenizer(cfg)
        data = _data(settings, cfg, tokenizer)
        device = pick_device(settings.device)
        per_lang = _evaluate_once(
            settings, context, cfg.round, weights,
            lambda: evaluate_round(data, tokenizer, cfg, weights, device),
        )  # fmt: skip
    except (StepError, ValueError) as exc:
        return error_reply(msg, exc)
    metrics: dict[str, Any] = {P.M_ROUND: cfg.round, P.M_BYTES_RECEIVED: received}
    add_eval_metrics(metrics, per_lang)
    content = RecordDict({P.METRICS: MetricRecord(metrics), P.NODE_INFO: node_info(settings)})
    say(context, f"round {cfg.round}/{cfg.total_rounds}: evaluated the weights on held-out "
         f"text of {', '.join(sorted(per_lang))}, received "
         f"{_mb(metrics[P.M_BYTES_RECEIVED])}")  # fmt: skip
    return Message(content, reply_to=msg)


def _evaluate_once(
    settings: NodeSettings,
    context: Context,
    of_round: int,
    weights: dict[str, torch.Tensor],
    compute: Callable[[], dict[str, tuple[float, int]]],
) -> dict[str, tuple[float, int]]:
    """``compute()`` the evaluation of round ``of_round``'s weights unless this run's round was
    evaluated before (eval_ledger.py: the kept result for the same weights, a refusal for
    others)."""
    ledger = EvalLedger(settings.state_dir)
    return ledger.evaluate(settings.name, context.run_id, of_round, view_id(weights), compute)


def add_eval_metrics(metrics: dict[str, Any], per_lang: dict[str, tuple[float, int]]) -> None:
    for lang, (nll, n_bytes) in per_lang.items():
        metrics[P.M_NLL_PREFIX + lang] = nll
        metrics[P.M_EVAL_BYTES_PREFIX + lang] = n_bytes


# A secure round's four stages, "train.secagg_keys" and so on: node/secure_client.py builds on
# the functions above and registers its handlers on ``app`` (imported last for that reason).
import node.secure_client  # noqa: E402, F401
