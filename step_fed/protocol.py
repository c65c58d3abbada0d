"""The wire protocol between coordinator and nodes: every record key, config key and metric name.

Both sides import these names; no string literal of the protocol appears anywhere else. A round's
train message carries:

    RecordDict {ARRAYS: ArrayRecord(global weights), CONFIG: ConfigRecord(round config)}

and a node replies with

    RecordDict {ARRAYS: ArrayRecord(encoded pseudo-gradient), METRICS: MetricRecord(...)}

An evaluate message carries the global weights and the config; its reply carries METRICS only,
with the summed negative log-likelihood and the bytes predicted per language (so that the
coordinator can weight languages by each node's held-out bytes exactly).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, get_args

from pydantic import ValidationError

from step_common.typed_config import STRICT, describe
from step_model.schedule import LocalSchedule

PROTOCOL_VERSION: Final = 1

# --- record names inside a Message's RecordDict ---
ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"

# --- round config (coordinator -> node) ---
CFG_PROTOCOL: Final = "protocol-version"
CFG_ROUND: Final = "round"
CFG_TOTAL_ROUNDS: Final = "total-rounds"
CFG_INNER_STEPS: Final = "inner-steps"
CFG_INNER_LR: Final = "inner-lr"
CFG_MIN_LR_RATIO: Final = "min-lr-ratio"
CFG_WARMUP_STEPS: Final = "warmup-steps"
CFG_WEIGHT_DECAY: Final = "weight-decay"
CFG_BETA1: Final = "beta1"
CFG_BETA2: Final = "beta2"
CFG_GRAD_CLIP: Final = "grad-clip"
CFG_BATCH_SIZE: Final = "batch-size"
CFG_SEQ_LEN: Final = "seq-len"
CFG_ALPHA: Final = "alpha"
CFG_SEED: Final = "seed"
CFG_UPDATE_ENCODING: Final = "update-encoding"
CFG_BROADCAST_ENCODING: Final = "broadcast-encoding"  # how the global weights travel down
CFG_DRIFT_CORRECTION: Final = "drift-correction"  # 1: nodes correct their drift (SCAFFOLD-like)
CFG_STEP_OFFSET: Final = "step-offset"  # global inner steps before this round
CFG_TOTAL_STEPS: Final = "total-steps"  # inner steps of the whole schedule
CFG_EVAL_FIRST: Final = "eval-first"  # 1: evaluate the received weights before training
CFG_VIEW_BASE: Final = "view-base"  # intN-delta: the id of the weights the change applies to
CFG_VIEW: Final = "view"  # the id of the weights this message gives the node (to keep)
CFG_SEEN_ROWS: Final = "seen-rows"  # > 0: send only the seen tokens' rows (SEEN_ROWS below)
CFG_MODEL_CONFIG: Final = "model-config"  # JSON of ModelConfig
CFG_TOKENIZER: Final = "tokenizer"  # tokenizer.json text; empty in an intN-delta change
CFG_TOKENIZER_SHA256: Final = "tokenizer-sha256"
CFG_EVAL_MAX_TOKENS: Final = "eval-max-tokens"  # 0: all held-out text

# --- metrics (node -> coordinator) ---
M_ROUND: Final = "round"  # echoed, so a late reply from another round is recognised
M_NUM_TOKENS: Final = "num-tokens"  # training tokens this round: the aggregation weight
M_TRAIN_LOSS: Final = "train-loss"  # mean over the round's inner steps, nats per token
M_WALL_S: Final = "wall-s"
M_BYTES_RECEIVED: Final = "bytes-received"
M_BYTES_SENT: Final = "bytes-sent"
M_TOKENS_PREFIX: Final = "tokens."  # "tokens.de": training tokens per language
M_NLL_PREFIX: Final = "nll."  # "nll.de": summed NLL in nats over the held-out text
M_EVAL_BYTES_PREFIX: Final = "eval-bytes."  # "eval-bytes.de": held-out UTF-8 bytes predicted
M_EPSILON: Final = "epsilon"  # local DP: epsilon this node has spent in total, after this round
M_DELTA: Final = "delta"  # ... at this delta

# The update's ArrayRecord also carries how often each token id was a training target this
# round, (vocab,) int32: the coordinator averages each embedding / output row over the nodes
# that saw that token (see coordinator/replies.py).
TOKEN_COUNTS: Final = "#token-counts"

# Tensors whose row k belongs to token k (state-dict names of step_model.model.Transformer).
EMBEDDING_WEIGHT: Final = "model.embed_tokens.weight"  # (vocab, dim)
OUTPUT_WEIGHT: Final = "lm_head.weight"  # (vocab, dim)
SEEN_ROWS: Final = {0: (), 1: (EMBEDDING_WEIGHT,), 2: (EMBEDDING_WEIGHT, OUTPUT_WEIGHT)}
"""Round config ``seen_rows`` -> the tensors of which a node sends only the rows of the tokens
it saw: 1 the input embedding (its other rows have no gradient), 2 also the output head."""

# --- error codes in an error reply (node -> coordinator) ---
ERR_BAD_CONFIG: Final = 1001  # the round config is missing keys or has a protocol mismatch
ERR_NODE_SETUP: Final = 1002  # the node's own settings or data are wrong (operator must fix)
ERR_TRAINING: Final = 1003  # training diverged (non-finite loss)
ERR_PRIVACY_BUDGET: Final = 1004  # the round would exceed the node's privacy budget: refused
ERR_STALE_VIEW: Final = 1005  # intN-delta: the node lacks the weights the change applies to

# --- update encodings (see update_codec.py) ---
UpdateEncoding = Literal[
    "fp32", "bf16", "int8", "int4", "int3", "int2", "int1",
    "top2-sign", "top4-sign", "top8-sign", "top16-sign", "top32-sign",
    "top2-int4", "top4-int4", "top8-int4", "top16-int4", "top32-int4",
]  # fmt: skip
"""Dense (update_codec.py) or sparse: ``top<K>-<values>``, the K largest of every 256 values
(sparse_codec.py)."""
ENCODINGS: Final[tuple[str, ...]] = get_args(UpdateEncoding)
DELTA_SUFFIX: Final = "-delta"
BroadcastEncoding = Literal[
    "fp32", "bf16", "int8-delta", "int4-delta", "int3-delta", "int2-delta", "int1-delta",
    "top2-sign-delta", "top4-sign-delta", "top8-sign-delta", "top16-sign-delta",
    "top32-sign-delta", "top2-int4-delta", "top4-int4-delta", "top8-int4-delta",
    "top16-int4-delta", "top32-int4-delta",
]  # fmt: skip
BROADCAST_ENCODINGS: Final[tuple[str, ...]] = get_args(BroadcastEncoding)
"""Weights down: whole (fp32, bf16; quantised weights would lose too much), or ``<enc>-delta``:
the change since the weights the nodes already hold, quantised per row (intN) or sparse
(topK), with error feedback (coordinator/broadcast.py)."""
SEED_BROADCAST: Final = "seed"
"""intN-delta, a fresh run's first message: no weights; the node draws the initial weights
with the round config's seed itself (step_model.checkpoint.seeded_weights) and checks that
their id is the message's ``view``."""


def per_language(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """``{"tokens.de": 5, "loss": 1}`` with prefix ``"tokens."`` -> ``{"de": 5}``."""
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


class RoundConfig(LocalSchedule):
    """What a node needs to train or evaluate one round, as sent in the CONFIG record. The inner
    optimizer's schedule and batches (``LocalSchedule``: min_lr_ratio, warmup_steps,
    weight_decay, beta1, beta2, grad_clip, batch_size, seq_len, alpha, seed) are the
    federation's, field for field."""

    model_config = STRICT
    round: int
    total_rounds: int
    inner_steps: int
    inner_lr: float
    update_encoding: str
    model_json: str
    """JSON of step_model.config.ModelConfig."""
    tokenizer: str
    """tokenizer.json text ('' in a change: the node holds it)."""
    tokenizer_sha256: str
    eval_max_tokens: int = 0
    broadcast_encoding: str = "fp32"
    drift_correction: int = 0
    eval_first: int = 0
    """1: the node first evaluates the weights it received (the previous round's result) and
    adds the evaluation metrics to its train reply: an evaluation without a second download."""
    step_offset: int = -1
    """Global inner steps before this round (-1: (round - 1) x inner_steps)."""
    total_steps: int = 0
    """Inner steps of the whole learning-rate schedule (0: total_rounds x inner_steps)."""
    view_base: str = ""
    """intN-delta: the id of the global weights the change in this message is added to."""
    view: str = ""
    """The id of the global weights this message gives (intN-delta mode; '' otherwise): the node
    keeps them as the base of the next change."""
    seen_rows: int = 0
    """A node that sends its token counts sends only the rows of the tokens it saw this round
    (count > 0, in token order) of the tensors ``SEEN_ROWS[seen_rows]``; the coordinator puts
    them back in place by those counts. It weighs the other rows 0 anyway (token rows)."""

    _KEYS: ClassVar[dict[str, str]] = {
        "round": CFG_ROUND,
        "total_rounds": CFG_TOTAL_ROUNDS,
        "inner_steps": CFG_INNER_STEPS,
        "inner_lr": CFG_INNER_LR,
        "min_lr_ratio": CFG_MIN_LR_RATIO,
        "warmup_steps": CFG_WARMUP_STEPS,
        "weight_decay": CFG_WEIGHT_DECAY,
        "beta1": CFG_BETA1,
        "beta2": CFG_BETA2,
        "grad_clip": CFG_GRAD_CLIP,
        "batch_size": CFG_BATCH_SIZE,
        "seq_len": CFG_SEQ_LEN,
        "alpha": CFG_ALPHA,
        "seed": CFG_SEED,
        "update_encoding": CFG_UPDATE_ENCODING,
        "model_json": CFG_MODEL_CONFIG,
        "tokenizer": CFG_TOKENIZER,
        "tokenizer_sha256": CFG_TOKENIZER_SHA256,
        "eval_max_tokens": CFG_EVAL_MAX_TOKENS,
        "broadcast_encoding": CFG_BROADCAST_ENCODING,
        "drift_correction": CFG_DRIFT_CORRECTION,
        "eval_first": CFG_EVAL_FIRST,
        "step_offset": CFG_STEP_OFFSET,
        "total_steps": CFG_TOTAL_STEPS,
        "view_base": CFG_VIEW_BASE,
        "view": CFG_VIEW,
        "seen_rows": CFG_SEEN_ROWS,
    }
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"eval_max_tokens", "broadcast_encoding", "drift_correction", "eval_first",
         "step_offset", "total_steps", "view_base", "view", "seen_rows"}
    )  # fmt: skip
    """Keys a message may lack (added after version 1 of the protocol): their defaults hold."""

    def to_wire(self) -> dict[str, int | float | str]:
        wire: dict[str, int | float | str] = {CFG_PROTOCOL: PROTOCOL_VERSION}
        for name in self._KEYS:
            wire[self._KEYS[name]] = getattr(self, name)
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, object]) -> RoundConfig:
        """Parse and check a received config (types strict, bounds as the federation's);
        ValueError names what is wrong."""
        if wire.get(CFG_PROTOCOL) != PROTOCOL_VERSION:
            raise ValueError(
                f"protocol version {wire.get(CFG_PROTOCOL)!r} != {PROTOCOL_VERSION}: "
                "coordinator and node run different step-federated versions"
            )
        values: dict[str, Any] = {}
        for name, key in cls._KEYS.items():
            if key in wire:
                values[name] = wire[key]
            elif name not in cls._OPTIONAL:
                raise ValueError(f"round config lacks {key!r}")
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise ValueError(f"round config: {describe(e, cls, '')}") from None


# --- run config (pyproject [tool.flwr.app.config], overridden by step-sim / step-coord) ---
RUN_CONFIG_FILE: Final = "config-file"  # the federation (or simulation) YAML
RUN_DIR: Final = "run-dir"  # where the coordinator writes checkpoints and metrics
RUN_RESUME: Final = "resume"  # continue from the last checkpoint in run-dir
RUN_NODE_FILES: Final = "node-files"  # simulation: folder of <partition-id>.yaml node files
RUN_REGISTRY: Final = "registry-file"  # deployment: enrolled names of the node ids ("": none)

# --- node identity in replies (a ConfigRecord, so it can carry text) ---
NODE_INFO: Final = "node"
NODE_NAME: Final = "name"
EPSILON_REPORT: Final = "epsilon_report"
"""A DP node's report of its spend: canonical JSON {node, run_id, round, epsilon, delta}."""
EPSILON_SIGNATURE: Final = "epsilon_signature"
"""The node key's signature (base64 ECDSA P-384) of the report's bytes."""

# --- secure aggregation (step_fed/secagg; README "Secure aggregation") ---
SECAGG: Final = "secagg"
"""The record (a ConfigRecord: texts, numbers, bytes) of a secure-aggregation stage, both ways:
the stage's request (step_fed/secagg/stages.py) and the node's answer (its advert, its sealed
shares, its revealed shares)."""
SECAGG_MASKED: Final = "secagg.masked"
"""The array of a secure train reply: the node's masked update (uint8/uint16, secagg/wire.py)."""
SECAGG_STAGES: Final = ("secagg_keys", "secagg_shares", "secagg_input", "secagg_reveal")
"""The message types' actions ("train.secagg_keys", ...) of a secure round's four stages."""
