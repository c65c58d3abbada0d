"""The federation's settings: the ``federation:`` section of a simulation or coordinator YAML.

Every field is documented here and validated at load time; a bad value names the file, the key
and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from step_common.errors import StepError
from step_common.fileio import read_yaml
from step_common.typed_config import STRICT, YamlFloat, parse_section
from step_fed.protocol import BroadcastEncoding, UpdateEncoding
from step_model.config import PRESETS
from step_model.corpus import resolve_corpus
from step_model.schedule import LocalSchedule

Rule = Literal["mean", "trimmed_mean", "median", "norm_clip", "filtered_mean"]

Strategy = Literal["diloco", "fedavg"]

SEEN_ROWS_LEVELS = {"none": 0, "embedding": 1, "embedding+head": 2}
"""federation.seen_rows -> the round config's ``seen_rows`` (step_fed.protocol.SEEN_ROWS)."""


class FederationConfig(LocalSchedule):
    """The federation's settings; the inner optimizer's schedule and batches (warmup in global
    inner steps, batch_size per node) come from ``LocalSchedule``."""

    model_config = STRICT
    preset: str = "debug"
    """Model preset (step_model.config)."""
    tokenizer: str = "byte"
    """'byte' or the path of a tokenizer.json (step-sim also takes 'bpe:N' and trains one)."""
    rounds: int = 20
    """Outer rounds."""
    strategy: Strategy = "diloco"
    """'diloco' (outer SGD with Nesterov momentum) or 'fedavg' (mean of the node weights)."""
    inner_steps: int = 50
    """H: local AdamW steps per node per round."""
    inner_lr: YamlFloat = 3e-3
    """Peak inner learning rate (cosine schedule over rounds * inner_steps global steps)."""
    outer_lr: YamlFloat = 0.7
    """DiLoCo outer learning rate (DiLoCo, INTELLECT-1: 0.7)."""
    outer_momentum: YamlFloat = 0.9
    """DiLoCo outer Nesterov momentum (0.9)."""
    outer_lr_rows: YamlFloat = 0.0
    """DiLoCo outer learning rate of the token rows (the input embedding and the output head)
    instead of ``outer_lr`` (0: ``outer_lr``, as for every other tensor). In the non-IID default
    they want a larger step than the transformer body: 1.5 beat 1.0 by 0.03 bpb at the end,
    0.5 lost 0.09 by round 60 (bench/RESULTS.md). That is the ``debug`` model's value: at
    ``tiny`` 1.5 lost 0.02 bpb to 1.0, so search it again for another model."""
    eval_every: int = 5
    """Federated evaluation every K rounds (and always after the last)."""
    eval_max_tokens: int = 0
    """Held-out tokens per language and node in evaluations (0: all)."""
    min_nodes: int = 1
    """Replies needed to commit a round. A node that restarts mid-round is sent the round again
    and waited for (delivery.py); below the node count, rounds also go on without a node that
    stays away."""
    round_timeout_s: YamlFloat = 600.0
    """How long a round waits for replies."""
    update_encoding: UpdateEncoding = "fp32"
    """How nodes send their update: fp32, bf16, or quantised per row with error feedback at the
    node: int8 (absmax, 1 byte per parameter), int4 (half a byte), int3 (7 levels, 3/8 of a
    byte), int2 (ternary at the row's mean magnitude, a fifth of a byte), int1 (the sign at the
    row's mean magnitude, an eighth of a byte); or sparse with error
    feedback: top<K>-sign / top<K>-int4, the K (2, 4, 8, 16, 32) largest of every 256 values
    with their positions, one sign bit or 4 bits each (top8-sign: 11 bytes per 256
    parameters; step_fed/sparse_codec.py)."""
    broadcast_encoding: BroadcastEncoding = "fp32"
    """How the global weights go to the nodes: whole in fp32 or bf16 (the coordinator keeps
    fp32), or int8-delta / int4-delta / int3-delta / int2-delta / int1-delta / top<K>-sign-delta /
    top<K>-int4-delta: only the change since the weights the nodes hold, what is not sent kept
    for the next round (coordinator/broadcast.py)."""
    token_rows: bool = True
    """Average each token's embedding and output rows over the nodes that saw the token (in
    proportion to how often), instead of over all nodes (see coordinator/replies.py)."""
    seen_rows: Literal["none", "embedding", "embedding+head"] = "embedding"
    """With token rows and the mean aggregation, each node sends only the rows of the tokens
    it saw in the round (about half the vocabulary for a regional node; the other rows would be
    weighed 0) of: 'embedding' (the input embedding: rows no node saw have no gradient and
    keep their value), 'embedding+head' (also the output head: the rows of tokens no node saw
    then keep their value too, instead of the mean push-down of their logits), or 'none'.
    Not with robust rules or central DP, which read every row."""
    drift_correction: bool = False
    """SCAFFOLD-style correction of client drift, at no extra communication: each inner step a
    node adds (global mean update - its own last update) per unit of learning rate, where it
    infers the global mean update from two consecutive global models. Needs strategy fedavg."""
    early_rounds: int = 0
    """The first ``early_rounds`` rounds run ``early_inner_steps`` local steps instead of
    ``inner_steps``: more, shorter rounds while the learning rate is high and the nodes would
    drift apart fastest (0: every round runs ``inner_steps``; at least ``rounds``, e.g. after
    ``step-sim --rounds N`` for a quick look: every round does)."""
    early_inner_steps: int = 0
    init_from: str = ""
    """A checkpoint (``step-model train --out`` or a run's) whose weights start the federation
    instead of random ones: a warm start, e.g. open data trained centrally, private data
    federated. Its model and tokenizer must be this run's (preset, tokenizer)."""
    keep_checkpoints: int = 3
    """Committed rounds kept on disk (the oldest is deleted only after the new one is durable)."""
    max_update_norm: YamlFloat = 0.0
    """Reject an update whose L2 norm exceeds this (0: no limit)."""
    update_memory_mib: int = 2048
    """Memory for updates that wait for their turn or that a robust rule keeps until the end
    of the round; beyond it they wait on disk in the run folder (coordinator/spill.py): the
    coordinator's memory then stays flat in the number of nodes."""
    aggregation: Rule = "mean"
    """How updates are combined: mean (token-weighted), trimmed_mean, median or norm_clip
    (robust rules against nodes that send wrong updates; coordinator/strategy/robust.py)."""
    trim_fraction: YamlFloat = 0.25
    """trimmed_mean: share of the nodes dropped at each end, per coordinate."""
    aggregation_clip: YamlFloat = 0.0
    """norm_clip, filtered_mean: every update scaled to at most this L2 norm (0: the round's
    median norm)."""
    filter_cosine: YamlFloat = 0.1
    """filtered_mean: updates whose cosine similarity with the coordinate-wise median of the
    round is below this are dropped (and reported)."""
    central_dp_noise: YamlFloat = 0.0
    """Central DP (institution level, coordinator/strategy/central_dp.py): noise multiplier
    sigma; the noisy sum gets N(0, (sigma C)^2) per coordinate (0: no central DP)."""
    central_dp_clip: YamlFloat = 0.0
    """C: every node's pseudo-gradient is clipped to this L2 norm (needed with central DP)."""
    central_dp_delta: YamlFloat = 1e-5
    """The delta at which the coordinator reports its epsilon (below 1 / number of nodes)."""
    secure_aggregation: bool = False
    """Secure aggregation (SecAgg+, step_fed/secagg): the coordinator learns only the sum of
    the nodes' updates, never one node's. Nodes clip and quantise their update onto a shared
    grid (the secure_* keys below) and mask it; needs aggregation mean, update_encoding fp32
    (the grid is the encoding) and no max_update_norm (the coordinator cannot read a norm)."""
    secure_clip: YamlFloat = 16.0
    """L2 norm each node clips its (token-share-scaled) update to before it is masked: the
    most one node can move the sum, and with central DP its sensitivity."""
    secure_range: YamlFloat = 0.02
    """Each coordinate of a node's scaled update is clamped to [-range, range] and rounded
    onto 2^secure_bits levels (the cut-off part is carried to the node's next round)."""
    secure_bits: int = 5
    """Levels per coordinate: 2^bits; masked values take bits + ceil(log2 nodes) bits (sent
    as 1 byte per parameter up to 8 bits in all, else 2). 5 bits over [-0.02, 0.02] cost 1.0-1.3%
    in bits per byte on the default example (bench/RESULTS.md)."""
    secure_row_cap: int = 8
    """With token_rows: a node's embedding and output row of token r weighs min(c, cap) / cap
    in the mean over the nodes that saw it (c: how often it saw the token); 1: every node
    that saw the token weighs the same. Larger caps follow the token counts further but let
    rounding error grow up to cap grid steps in rare tokens' rows. At most 2^secure_bits - 1.
    8 was the best of 1, 8 and 31 at round 40 of the default example (bench/RESULTS.md)."""
    secure_degree: int = 0
    """Neighbours each node shares secrets with (0: about 2 log2 n, at least 4; n - 1 or
    more: every other node)."""
    secure_threshold: int = 0
    """Shares that rebuild a node's secrets (0: more than half of its holders, its neighbours and
    itself)."""
    secure_min_survivors: int = 0
    """Nodes whose masked update must be in the sum, or the round is abandoned and retried
    (0: the larger of the threshold, min_nodes and 2)."""

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        # One validator calling the groups in a fixed order: for a config with several
        # mistakes, the first one reported is always the same.
        self._check_positive()
        self._check_choices()
        self._check_local_steps()
        self._check_aggregation()
        self._check_central_dp()
        self._check_secure_aggregation()
        self._check_other_ranges()
        return self

    def _bad(self, key: str, allowed: str) -> StepError:
        """The error for ``federation.<key>``: its value and what is allowed."""
        return StepError(f"federation.{key} = {getattr(self, key)!r}: {allowed}")

    def _check_positive(self) -> None:
        """Counts and rates that must be above zero."""
        for key in ("rounds", "inner_steps", "eval_every", "min_nodes", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise self._bad(key, "must be a positive integer")
        for key in ("inner_lr", "outer_lr", "round_timeout_s"):
            if not getattr(self, key) > 0:  # `not > 0` also refuses NaN
                raise self._bad(key, "must be positive")

    def _check_choices(self) -> None:
        """The model preset (presets are code; the other choices are Literal fields)."""
        if self.preset not in PRESETS:
            raise self._bad("preset", f"choose one of {', '.join(PRESETS)}")

    def _check_local_steps(self) -> None:
        """How nodes train within a round: early rounds and drift correction."""
        if self.early_rounds < 0:  # above federation.rounds (--rounds N): every round is early
            raise self._bad("early_rounds", "must be >= 0")
        if self.early_rounds and self.early_inner_steps < 1:
            raise self._bad("early_inner_steps", "must be a positive integer when early_rounds > 0")
        if self.drift_correction and self.strategy != "fedavg":
            raise self._bad(
                "drift_correction",
                "needs strategy fedavg (nodes infer the global "
                "update from two consecutive global models, which momentum would distort)",
            )

    def _check_aggregation(self) -> None:
        """Which rows nodes send, the aggregation rule and the robust rules' parameters."""
        if not 0 <= self.trim_fraction < 0.5:
            raise self._bad("trim_fraction", "must be in [0, 0.5)")
        if not -1 <= self.filter_cosine < 1:
            raise self._bad("filter_cosine", "must be in [-1, 1)")
        if self.aggregation_clip < 0:
            raise self._bad("aggregation_clip", "must be >= 0 (0: the round's median update norm)")

    def _check_central_dp(self) -> None:
        """Central DP: its noise, clip and delta, and the aggregation it needs."""
        if self.central_dp_noise > 0 and self.aggregation != "mean":
            raise self._bad(
                "aggregation",
                "central DP clips and averages the updates itself: use aggregation mean "
                "with central_dp_noise > 0",
            )
        if self.central_dp_noise < 0:
            raise self._bad("central_dp_noise", "must be >= 0 (0: no central DP)")
        if self.central_dp_noise > 0 and not self.central_dp_clip > 0:
            raise self._bad("central_dp_clip", "must be positive when central_dp_noise > 0")
        if not 0 < self.central_dp_delta < 1:
            raise self._bad("central_dp_delta", "must be in (0, 1), e.g. 1.0e-5")

    def _check_secure_aggregation(self) -> None:
        """The grid, and what secure aggregation cannot coexist with: any rule or check that
        reads a single node's update."""
        if not self.secure_clip > 0:
            raise self._bad("secure_clip", "must be positive")
        if not self.secure_range > 0:
            raise self._bad("secure_range", "must be positive")
        if not 1 <= self.secure_bits <= 12:
            raise self._bad("secure_bits", "must be in [1, 12]")
        if not 1 <= self.secure_row_cap < 1 << self.secure_bits:
            raise self._bad("secure_row_cap", "must be in [1, 2^secure_bits - 1]")
        for key in ("secure_degree", "secure_threshold", "secure_min_survivors"):
            if getattr(self, key) < 0:
                raise self._bad(key, "must be >= 0 (0: chosen from the number of nodes)")
        if not self.secure_aggregation:
            return
        if self.aggregation != "mean":
            raise self._bad("aggregation", "secure aggregation reveals only the sum of the "
                            "updates, which robust rules cannot work on: use aggregation mean "
                            "or turn secure_aggregation off")  # fmt: skip
        if self.update_encoding != "fp32":
            raise self._bad(
                "update_encoding",
                "with secure aggregation nodes send their update on the shared grid "
                "(secure_bits): set update_encoding fp32",
            )
        if self.max_update_norm > 0:
            raise self._bad(
                "max_update_norm",
                "the coordinator cannot read a node's norm under secure aggregation (nodes "
                "clip to secure_clip): set it to 0",
            )

    def _check_other_ranges(self) -> None:
        """The remaining bounds: outer momentum, evaluation size, update norm limit, memory for
        waiting updates."""
        if self.update_memory_mib < 0:
            raise self._bad("update_memory_mib", "must be >= 0 (0: every waiting update on disk)")
        if not 0 <= self.outer_momentum < 1:
            raise self._bad("outer_momentum", "must be in [0, 1)")
        if not self.outer_lr_rows >= 0:  # `not >= 0` also refuses NaN
            raise self._bad("outer_lr_rows", "must be >= 0 (0: outer_lr)")
        if self.outer_lr_rows and self.strategy != "diloco":
            raise self._bad(
                "outer_lr_rows", "is DiLoCo's (fedavg has no outer lr): set it to 0 or use diloco"
            )
        if self.eval_max_tokens < 0:
            raise self._bad("eval_max_tokens", "must be >= 0 (0: all)")
        if self.max_update_norm < 0:
            raise self._bad("max_update_norm", "must be >= 0 (0: no limit)")

    def steps_in_round(self, round_: int) -> int:
        """H of round ``round_`` (1-based)."""
        return self.early_inner_steps if round_ <= self.early_rounds else self.inner_steps

    def step_offset(self, round_: int) -> int:
        """Global inner steps before round ``round_`` (where its learning rate schedule starts)."""
        early = min(round_ - 1, self.early_rounds)
        return early * self.early_inner_steps + (round_ - 1 - early) * self.inner_steps

    @property
    def total_inner_steps(self) -> int:
        return self.step_offset(self.rounds + 1)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def federation_from_dict(data: Any, source: str) -> FederationConfig:
    return parse_section(FederationConfig, data, source, "federation")


def load_federation_config(path: Path) -> FederationConfig:
    """The ``federation:`` section of a YAML file."""
    return federation_from_dict(_read_yaml(path).get("federation"), str(path))


def load_corpus_setting(path: Path) -> Path | None:
    """The file's top-level ``corpus`` (simulations: where a ``bpe:N`` tokenizer is trained)."""
    corpus = _read_yaml(path).get("corpus")
    try:
        return resolve_corpus(str(corpus) if corpus else None)
    except StepError:
        return None  # a deployment: the coordinator holds no text


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "check the path of the config file")
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected a mapping with a 'federation' section")
    return data


RESUMABLE = ("rounds", "eval_every", "round_timeout_s", "keep_checkpoints", "update_memory_mib")
"""Settings a resumed run may change; any other change would make it another run."""


def check_same_settings(cfg: FederationConfig, state: dict[str, Any]) -> None:
    """StepError unless ``cfg`` is the configuration the checkpoint's run was started with."""
    saved = state.get("federation", {})
    defaults = FederationConfig().to_dict()  # keys a checkpoint of an older version lacks
    changed = [
        k for k, v in cfg.to_dict().items() if k not in RESUMABLE and saved.get(k, defaults[k]) != v
    ]
    if changed:
        raise StepError(
            f"resume with different federation settings {changed}: use the original config "
            "or start a new run"
        )
