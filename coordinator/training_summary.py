"""What a federated model was trained on, from the run's own records: ``training_summary.json``
(this module's ``TrainingSummary``, whose JSON schema validates it) and the model card built
from it (model_card.py).

Laid out after the EU AI Office's template for the public summary of training content of
general-purpose AI models (AI Act Art. 53(1)(d), July 2025): general information (model,
modality, languages, size of the training data), the list of data sources (public datasets,
private datasets of the data holders, crawled, user and synthetic data), and data processing
aspects; then what this project adds: privacy guarantees, compute and evaluation. Every number
comes from the run folder (the last checkpoint's state, ``summary.json``, ``metrics.jsonl``, a
simulation's ``sim.yaml``) and the corpus manifest; fields a federation cannot know are listed
as such (``not_known``), never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from step_common.errors import StepError
from step_model.checkpoint import Checkpoint
from step_model.corpus import LanguageSelection, read_corpus
from step_model.evaluate import mean_bpb

SCHEMA = "step-training-summary-v1"
UNSPECIFIED = "not declared"
"""The kind of an institution that did not declare one (every deployed node, today)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Institution(Strict):
    name: str
    description: str = ""
    kind: str = UNSPECIFIED
    """What sort of institution, as the simulation config declares it."""
    languages: list[str]
    """The languages it held ([] where the coordinator was not told: a deployment)."""
    rounds: int
    """Rounds whose sum or mean included its update."""
    tokens: int
    """Training tokens: rounds x inner steps x batch x sequence length of those rounds
    (expected counts for an institution training with DP, whose batches are Poisson-drawn)."""
    tokens_expected: bool
    epsilon: float | None = None
    """Local DP: the epsilon it reported last (sample level), None without DP."""


class KindTokens(Strict):
    institutions: list[str]
    tokens: int
    expected: bool
    """Part of the tokens are expected counts (an institution of this kind trained with DP)."""


class DataSource(Strict):
    name: str
    license: str
    version: str = ""
    registry: str = ""


class Privacy(Strict):
    local_dp: dict[str, float]
    """Institution -> epsilon spent (sample level: one training sequence)."""
    local_dp_unit: str
    central_dp_epsilon: float | None
    central_dp_delta: float | None
    secure_aggregation: bool
    """The coordinator saw only the sum of the institutions' updates."""


class Compute(Strict):
    parameters: int
    flops_per_token: int
    tokens: int
    flops: float
    """flops_per_token x tokens (training FLOPs, forward and backward)."""
    wall_s: float
    node_hours: float
    """Institutions x the federation's wall time (an upper bound: nodes wait between rounds)."""


class Evaluation(Strict):
    split: str
    bits_per_byte: dict[str, float]
    mean_bits_per_byte: float | None


class TrainingSummary(Strict):
    schema_id: str = SCHEMA
    model_name: str
    architecture: str
    modality: str
    tokenizer: str
    vocab_size: int
    chars_per_token: dict[str, float]
    """Per language, on the held-out text the evaluation read (empty when not measured)."""
    languages: list[str]
    training_tokens: int
    tokens_per_language: dict[str, int]
    """Empty under secure aggregation: only the total is in the sum."""
    tokens_per_institution_kind: dict[str, KindTokens]
    institutions: list[Institution]
    public_datasets: list[DataSource]
    private_datasets: str
    crawled_data: str
    user_data: str
    synthetic_data: str
    data_processing: str
    privacy: Privacy
    compute: Compute
    evaluation: Evaluation
    federation: dict[str, Any]
    """The federation's settings as the run was started with them."""
    intended_use: str
    limitations: str
    not_known: list[str]
    """Fields of the template this run cannot fill, and why."""


def summarize(run_dir: Path, ckpt: Checkpoint, name: str) -> TrainingSummary:
    """The training summary of the federated run in ``run_dir`` whose last checkpoint is
    ``ckpt``."""
    state = ckpt.state
    if "federation" not in state or "history" not in state:
        raise StepError(f"{run_dir} is not a federated run's folder (its checkpoint has no "
                        "federation history): export a step-sim or step-coord run")  # fmt: skip
    fed, history = state["federation"], state["history"]
    summary = _read_json(run_dir / "summary.json")
    sim = _read_sim(run_dir / "sim.yaml")
    rounds = [h for h in history if h["kind"] == "round"]
    evals = [h for h in history if h["kind"] == "eval"]
    last = evals[-1] if evals else {"bpb": {}, "mean_bpb": None}
    tokens = int(state["totals"]["tokens"])
    per_language = {k: int(v) for k, v in state["totals"]["tokens_per_language"].items()}
    institutions = _institutions(rounds, sim, fed)
    secure = bool(fed.get("secure_aggregation", False))
    epsilon = {k: float(v) for k, v in summary.get("epsilon", {}).items()}
    central = summary.get("epsilon_central")
    flops_per_token = ckpt.config.flops_per_token(int(fed["seq_len"]))
    wall = float(state.get("wall_s", 0.0))
    return TrainingSummary(
        model_name=name,
        architecture=f"LlamaForCausalLM (decoder-only transformer, STEP preset {fed['preset']})",
        modality="text",
        tokenizer=ckpt.tokenizer.name,
        vocab_size=ckpt.tokenizer.vocab_size,
        chars_per_token=_chars_per_token(sim.get("corpus"), sorted(last["bpb"]), ckpt),
        languages=sorted(set(last["bpb"]) | set(per_language)),
        training_tokens=tokens,
        tokens_per_language=per_language,
        tokens_per_institution_kind=_per_kind(institutions),
        institutions=institutions,
        public_datasets=_sources(sim.get("corpus")),
        private_datasets=(
            "Each institution trained on text it holds and did not share: the coordinator "
            "knows its name, the languages a simulation assigned it and the tokens it "
            "trained, not the text."
        ),
        crawled_data="None crawled for this run.",
        user_data="None.",
        synthetic_data="None.",
        data_processing=(
            "Texts are read as UTF-8 paragraphs and tokenized; no filtering beyond what the "
            "corpus builder applied to its sources (their licenses above). Opt-outs under "
            "Art. 4(3) of Directive (EU) 2019/790 apply to the institutions' own collection."
        ),
        privacy=Privacy(
            local_dp=epsilon,
            local_dp_unit=str(summary.get("privacy_unit", "")),
            central_dp_epsilon=None if central is None else float(central),
            central_dp_delta=summary.get("delta_central"),
            secure_aggregation=secure,
        ),
        compute=Compute(
            parameters=ckpt.config.num_params(),
            flops_per_token=flops_per_token,
            tokens=tokens,
            flops=float(flops_per_token) * tokens,
            wall_s=wall,
            node_hours=len(institutions) * wall / 3600,
        ),
        evaluation=Evaluation(
            split="valid (held out by every institution)",
            bits_per_byte={k: float(v) for k, v in last["bpb"].items()},
            mean_bits_per_byte=mean_bpb(last["bpb"]) if last["bpb"] else None,
        ),
        federation=dict(fed),
        intended_use=(
            "Research on federated training of multilingual language models; a base model "
            "to fine-tune, not an assistant. Not evaluated for safety or factuality."
        ),
        limitations=(
            "Small model trained on little text; quality differs by language (see the "
            "evaluation); it reproduces the style and errors of its training text."
        ),
        not_known=_not_known(secure, sim),
    )


def _institutions(
    rounds: list[dict[str, Any]], sim: dict[str, Any], fed: dict[str, Any]
) -> list[Institution]:
    """Each institution's rounds and tokens from the round records (who was in each round)."""
    per_round = int(fed["batch_size"]) * int(fed["seq_len"])
    declared = {i["name"]: i for i in sim.get("institutions", [])}
    private = set(sim.get("privacy_institutions", []))
    counted: dict[str, list[int]] = {}
    for r in rounds:
        steps = _steps(fed, int(r["round"]))
        for node in r.get("node_wall_s", {}):
            counted.setdefault(node, []).append(steps * per_round)
    epsilons = {}
    for r in rounds:
        epsilons.update(r.get("epsilon", {}))
    out = []
    for node in sorted(set(counted) | set(declared)):
        inst = declared.get(node, {})
        out.append(Institution(
            name=node,
            description=str(inst.get("description", "")),
            kind=str(inst.get("kind") or UNSPECIFIED),
            languages=sorted(inst.get("languages", {})),
            rounds=len(counted.get(node, [])),
            tokens=sum(counted.get(node, [])),
            tokens_expected=node in epsilons or node in private,
            epsilon=epsilons.get(node),
        ))  # fmt: skip
    return out


def _per_kind(institutions: list[Institution]) -> dict[str, KindTokens]:
    """Tokens trained by each kind of institution (expected counts where one trained with
    DP: its batches are Poisson-drawn, and the count drawn is not released)."""
    kinds: dict[str, KindTokens] = {}
    for i in institutions:
        k = kinds.setdefault(i.kind, KindTokens(institutions=[], tokens=0, expected=False))
        k.institutions.append(i.name)
        k.tokens += i.tokens
        k.expected = k.expected or i.tokens_expected
    return dict(sorted(kinds.items()))


def _steps(fed: dict[str, Any], round_: int) -> int:
    early = int(fed.get("early_rounds", 0))
    return int(fed["early_inner_steps"]) if round_ <= early else int(fed["inner_steps"])


def _sources(corpus: str | None) -> list[DataSource]:
    if not corpus:
        return []
    manifest = _read_json(Path(corpus) / "MANIFEST.json")
    return [
        DataSource(
            name=name,
            license=str(s.get("license", "")),
            version=str(s.get("version", "")),
            registry=str(s.get("registry", "")),
        )
        for name, s in sorted(manifest.get("sources", {}).items())
    ]


CHARS_SAMPLE = 200_000
"""Held-out characters per language the chars-per-token figure reads (at most)."""


def _chars_per_token(
    corpus: str | None, languages: list[str], ckpt: Checkpoint
) -> dict[str, float]:
    """Characters per token of the model's tokenizer on each language's held-out text (a
    simulation's corpus; {} for a deployment, whose coordinator holds no text)."""
    if not corpus or not languages:
        return {}
    try:
        texts = read_corpus(Path(corpus), "valid", LanguageSelection.parse(languages))
    except StepError:
        return {}
    out = {}
    for lang, text in sorted(texts.items()):
        sample = text[:CHARS_SAMPLE]
        tokens = len(ckpt.tokenizer.encode(sample))
        if tokens:
            out[lang] = round(len(sample) / tokens, 4)
    return out


def _not_known(secure: bool, sim: dict[str, Any]) -> list[str]:
    out = [
        "what an institution's private text contained beyond its languages and size: the "
        "coordinator never sees it",
        "the time span of the training data (the sources' own dates are in their licenses' "
        "packages, not in this run)",
    ]
    if not sim:
        out.append("which languages each institution held and what kind of institution it "
                   "is (a deployment's nodes do not declare them; the evaluation shows which "
                   "languages they evaluate)")  # fmt: skip
    if secure:
        out.append("tokens per language and per institution in a round: under secure "
                   "aggregation only their sum reaches the coordinator; per institution "
                   "they are rounds x the round's batch")  # fmt: skip
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_sim(path: Path) -> dict[str, Any]:
    """A step-sim run's config (institutions, corpus); {} for a deployment."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict):
        return {}
    privacy_all = data.get("privacy") is not None
    insts = data.get("institutions", [])
    data["privacy_institutions"] = [i["name"] for i in insts
                                    if privacy_all or i.get("privacy")]  # fmt: skip
    return data
