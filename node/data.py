"""A node's text: read once, sliced to the node's share, tokenized with the federation's tokenizer.

Tokenizing is the slow part of starting a round, so ``NodeData`` is cached per (settings,
tokenizer) in the process: a Flower simulation reuses its worker processes across rounds and
virtual nodes, and a deployed node serves all rounds from one process.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.settings import NodeSettings
from step_model.corpus import LanguageSelection, is_step_corpus, read_corpus, read_text_dir
from step_model.data import TokenStream, tokenize_texts
from step_model.errors import StepError
from step_model.tokenizer import Tokenizer


@dataclass(frozen=True)
class NodeData:
    train: dict[str, TokenStream]
    valid: dict[str, TokenStream]


def _slice(text: str, lo: float, hi: float) -> str:
    paragraphs = text.splitlines(keepends=True)
    n = len(paragraphs)
    return "".join(paragraphs[round(lo * n) : round(hi * n)])


def _split_holdout(text: str, fraction: float) -> tuple[str, str]:
    """Every k-th paragraph (k = 1/fraction) held out; deterministic, spread over the file."""
    paragraphs = text.splitlines(keepends=True)
    k = max(2, round(1 / fraction))
    held = "".join(p for i, p in enumerate(paragraphs) if i % k == k - 1)
    kept = "".join(p for i, p in enumerate(paragraphs) if i % k != k - 1)
    return kept, held


def read_node_texts(settings: NodeSettings) -> tuple[dict[str, str], dict[str, str]]:
    """(train, held-out) text per language of this node."""
    langs = tuple(settings.languages) if settings.languages else None
    selection = LanguageSelection(langs, strict=langs is not None)
    if is_step_corpus(settings.data):
        train = read_corpus(settings.data, "train", selection)
        try:
            valid = read_corpus(settings.data, "valid", LanguageSelection(tuple(train), False))
        except StepError:
            valid = {}
    else:
        own = read_text_dir(settings.data, selection)
        pairs = {lang: _split_holdout(t, settings.holdout_fraction) for lang, t in own.items()}
        train = {lang: p[0] for lang, p in pairs.items()}
        valid = {lang: p[1] for lang, p in pairs.items() if p[1]}
    if settings.languages:
        train = {lang: _slice(t, *settings.languages[lang].train) for lang, t in train.items()}
        valid = {lang: _slice(t, *settings.languages[lang].valid) for lang, t in valid.items()}
    empty = [lang for lang, t in train.items() if not t]
    if empty:
        raise StepError(
            f"node {settings.name}: its share of {empty} holds no paragraph: raise the "
            "share or drop the language"
        )
    return train, {lang: t for lang, t in valid.items() if t}


def load_node_data(settings: NodeSettings, tokenizer: Tokenizer) -> NodeData:
    train, valid = read_node_texts(settings)
    return NodeData(tokenize_texts(train, tokenizer), tokenize_texts(valid, tokenizer))
