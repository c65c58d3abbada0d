"""Tokenizers: byte-level (lossless, no training) and byte-level BPE (trained, language-balanced).

Both expose the same small interface (``Tokenizer``): encode to a numpy int array, decode, the
special-token ids, and the number of UTF-8 bytes each token stands for. That last table is what
makes bits-per-byte tokenizer-independent: the evaluation divides the summed negative
log-likelihood by the bytes the predicted tokens cover.

Both are saved as one ``tokenizer.json``: the byte tokenizer as a tiny STEP-specific object, the
BPE tokenizer in the Hugging Face ``tokenizers`` format, so Hugging Face tools read it as is.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from step_common.errors import StepError
from step_common.fileio import atomic_write_text

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
BYTE_TOKENIZER_KIND = "step-byte-v1"


class Tokenizer(Protocol):
    """What the trainer, the evaluation and the checkpoint need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def name(self) -> str: ...

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) int64: UTF-8 bytes each token decodes to (0 for special tokens)."""
        ...

    def to_json(self) -> str: ...


class ByteTokenizer:
    """Token i < 256 is byte i; then <|bos|>, <|eos|>, <|pad|>. Lossless on any UTF-8 text."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIAL_TOKENS)

    @property
    def bos_id(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        table = np.ones(self.vocab_size, dtype=np.int64)
        table[256:] = 0
        return table

    def to_json(self) -> str:
        return json.dumps({"kind": BYTE_TOKENIZER_KIND, "special_tokens": list(SPECIAL_TOKENS)})


class BPETokenizer:
    """A byte-level BPE from the ``tokenizers`` library (GPT-2 style byte-to-unicode alphabet)."""

    name = "bpe"

    def __init__(self, tok: object) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        assert isinstance(tok, HFTokenizer)
        self._tok = tok
        bos = tok.token_to_id(BOS)
        if bos is None:
            raise StepError(
                f"BPE tokenizer has no {BOS} token: train it with `step-model tokenizer train`"
            )
        self._bos = bos

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def bos_id(self) -> int:
        return self._bos

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        # The Rust side encodes the batch on all cores.
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def token_bytes(self) -> np.ndarray:
        # Byte-level BPE tokens are strings over a 256-character alphabet, one character per byte.
        table = np.zeros(self.vocab_size, dtype=np.int64)
        specials = set(SPECIAL_TOKENS)
        for token, idx in self._tok.get_vocab(with_added_tokens=True).items():
            table[idx] = 0 if token in specials else len(token)
        return table

    def to_json(self) -> str:
        return str(self._tok.to_str())


def tokenizer_from_json(text: str, source: str = "tokenizer.json") -> Tokenizer:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StepError(f"{source} is not valid JSON ({e}): re-create or re-download it") from None
    if isinstance(data, dict) and data.get("kind") == BYTE_TOKENIZER_KIND:
        return ByteTokenizer()
    if isinstance(data, dict) and "model" in data:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return BPETokenizer(HFTokenizer.from_str(text))
        except Exception as e:  # the Rust side raises a plain Exception on bad files
            raise StepError(
                f"{source} is not a readable BPE tokenizer ({e}): re-train it"
            ) from None
    raise StepError(
        f"{source} is neither a STEP byte tokenizer nor a Hugging Face tokenizer: "
        "use 'byte' or a file written by `step-model tokenizer train`"
    )


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """``"byte"`` or the path of a tokenizer.json."""
    if str(spec) == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if not path.is_file():
        raise StepError(f"tokenizer file {path} not found: pass 'byte' or a tokenizer.json path")
    return tokenizer_from_json(path.read_text(encoding="utf-8"), source=str(path))


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    atomic_write_text(path, tok.to_json())


def train_bpe(texts: Iterable[str], vocab_size: int, show_progress: bool = False) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens included) on ``texts``;
    ``show_progress``: the tokenizers library's own bars on stderr (a terminal only).

    The initial alphabet is all 256 bytes, so any UTF-8 text (any script) encodes losslessly.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    min_vocab = 256 + len(SPECIAL_TOKENS) + 1
    if vocab_size < min_vocab:
        raise StepError(
            f"--vocab-size {vocab_size} is too small: a byte-level BPE needs >= {min_vocab}"
        )
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def balanced_sample(texts: dict[str, str], chars_per_language: int, seed: int = 0) -> list[str]:
    """Up to ``chars_per_language`` characters of random paragraphs from each language.

    Balanced so that the merges are not all spent on the largest languages, and by characters
    rather than bytes: a Greek or Cyrillic character takes two UTF-8 bytes, so a byte-balanced
    sample gives those scripts half the text and their words fewer merges (measured on the UDHR:
    Greek 1.92x the tokens of English with a byte-balanced 2048-token BPE, 1.77x char-balanced).
    """
    rng = random.Random(seed)
    sample: list[str] = []
    for lang in sorted(texts):
        paragraphs = texts[lang].splitlines(keepends=True)
        rng.shuffle(paragraphs)
        taken = 0
        for p in paragraphs:
            if taken >= chars_per_language:
                break
            sample.append(p)
            taken += len(p)
    return sample


BPE_SAMPLE_CHARS = 500_000


def resolve_tokenizer(
    spec: str, corpus: Path | None, cache_dir: Path, show_progress: bool = False
) -> Tokenizer:
    """``"byte"``, a tokenizer.json path, or ``"bpe:N"``: an N-token BPE trained on a balanced
    sample of the corpus's train split (all languages), saved once as
    ``cache_dir/tokenizer-bpeN.json`` and reused from there (``show_progress``: train_bpe's)."""
    if not spec.startswith("bpe:"):
        return load_tokenizer(spec)
    try:
        vocab_size = int(spec[4:])
    except ValueError:
        raise StepError(f"tokenizer {spec!r}: write bpe:N with N the vocabulary size") from None
    cached = Path(cache_dir) / f"tokenizer-bpe{vocab_size}.json"
    if cached.is_file():
        return load_tokenizer(cached)
    if corpus is None:
        raise StepError(
            f"tokenizer {spec!r} must be trained on a corpus, and none is configured: "
            "give a tokenizer.json path instead"
        )
    from step_model.corpus import LanguageSelection, read_step_corpus

    texts = read_step_corpus(Path(corpus), "train", LanguageSelection(None, strict=False))
    tok = train_bpe(balanced_sample(texts, BPE_SAMPLE_CHARS), vocab_size, show_progress)
    save_tokenizer(tok, cached)
    return tok
