"""A node's text: read once, sliced to the node's share, tokenized with the federation's tokenizer.

Tokenizing is the slow part of starting a round, so ``NodeData`` is cached per (settings,
tokenizer) in the process: a Flower simulation reuses its worker processes across rounds and
virtual nodes, and a deployed node serves all rounds from one process.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.settings import NodeSettings
from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_json
from step_model.corpus import LanguageSelection, is_step_corpus, read_corpus, read_text_dir
from step_model.data import TokenStream, tokenize_texts
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
        own = read_text_dir(settings.data, selection, settings.encoding)
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
    """The node's token streams, from its cache in ``state_dir/tokens`` when the data files and
    the tokenizer are unchanged (a deployed node starts a fresh ClientApp process per message:
    without the cache it would re-read and re-tokenize all its text every round)."""
    key = _cache_key(settings, tokenizer)
    folder = settings.state_dir / "tokens" / key
    if (folder / "meta.json").is_file():
        try:
            return _read_cache(folder)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    train, valid = read_node_texts(settings)
    data = NodeData(tokenize_texts(train, tokenizer), tokenize_texts(valid, tokenizer))
    _write_cache(folder, data)
    return data


def _cache_key(settings: NodeSettings, tokenizer: Tokenizer) -> str:
    """Changes when the settings, the tokenizer, or any data file (size, mtime) changes."""
    h = hashlib.sha256(repr(settings).encode())
    h.update(tokenizer.to_json().encode("utf-8"))
    root = settings.data
    files = sorted(root.rglob("*")) if root.is_dir() else []
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _write_cache(folder: Path, data: NodeData) -> None:
    meta = {
        split: {lang: s.n_bytes for lang, s in streams.items()}
        for split, streams in (("train", data.train), ("valid", data.valid))
    }
    try:
        if folder.parent.is_dir():  # one cache per node: drop those of older data/tokenizers
            for old in folder.parent.iterdir():
                if old.name != folder.name:
                    shutil.rmtree(old, ignore_errors=True)
        with atomic_directory(folder) as tmp:
            for split, streams in (("train", data.train), ("valid", data.valid)):
                for lang, s in streams.items():
                    np.save(tmp / f"{split}-{lang}.npy", s.tokens)
            atomic_write_json(tmp / "meta.json", meta)
    except OSError:
        pass  # a cache that cannot be written (full disk, race with another process) is optional


def _read_cache(folder: Path) -> NodeData:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))

    def streams(split: str) -> dict[str, TokenStream]:
        return {
            lang: TokenStream(lang, np.load(folder / f"{split}-{lang}.npy"), int(n_bytes))
            for lang, n_bytes in meta[split].items()
        }

    return NodeData(streams("train"), streams("valid"))
