"""Token streams per language and the temperature-sampled batch mixture.

Each language's text becomes one 1-D token stream. A training sequence is a window of ``seq_len``
tokens from a random position of one language's stream, preceded by <|bos|>:

    x = [bos, t_0, ..., t_{T-2}]      y = [t_0, ..., t_{T-1}]

so every token of the window is a prediction target, exactly as in evaluation (evaluate.py).

Languages are drawn with probability proportional to bytes**alpha (XLM-R / mT5 "temperature"
sampling): alpha 1 follows the data, alpha 0 is uniform; the default 0.3 keeps small languages
from being drowned without repeating their few kilobytes hundreds of times.

Batches are a pure function of (seed, step): a resumed run draws exactly the batches an
uninterrupted one would, with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from step_common.errors import StepError
from step_model.tokenizer import Tokenizer


@dataclass(frozen=True)
class TokenStream:
    lang: str
    tokens: np.ndarray
    """(n,) int32 token ids."""
    n_bytes: int
    """UTF-8 bytes of the text the tokens encode."""


def tokenize_texts(texts: Mapping[str, str], tokenizer: Tokenizer) -> dict[str, TokenStream]:
    """Encode each language's text (paragraph by paragraph, newline kept) into one stream."""
    streams = {}
    for lang, text in texts.items():
        paragraphs = text.splitlines(keepends=True)
        parts = tokenizer.encode_batch(paragraphs) if paragraphs else []
        tokens = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, dtype=np.int32)
        streams[lang] = TokenStream(lang, tokens, len(text.encode("utf-8")))
    return streams


def mixture_weights(byte_counts: Mapping[str, int], alpha: float) -> dict[str, float]:
    """p_lang proportional to bytes**alpha, normalised."""
    if not 0.0 <= alpha <= 1.0:
        raise StepError(
            f"alpha {alpha} out of range: use a value in [0, 1] (0 uniform, 1 proportional)"
        )
    raw = {lang: float(n) ** alpha for lang, n in byte_counts.items()}
    total = sum(raw.values())
    return {lang: w / total for lang, w in raw.items()}


class LanguageMixture:
    """Draws training batches (x, y) of shape (B, T) from several language streams."""

    def __init__(
        self, streams: Mapping[str, TokenStream], seq_len: int, alpha: float, bos_id: int, seed: int
    ) -> None:
        short = [
            f"{s.lang} ({len(s.tokens)} tokens)"
            for s in streams.values()
            if len(s.tokens) < seq_len
        ]
        if short:
            raise StepError(
                f"too little text for a {seq_len}-token sequence in {', '.join(short)}: "
                "drop those languages or lower --seq-len"
            )
        if not streams:
            raise StepError("no training text: select at least one language with text")
        self.langs = sorted(streams)
        self.streams = [streams[lang].tokens for lang in self.langs]
        weights = mixture_weights({lang: streams[lang].n_bytes for lang in self.langs}, alpha)
        self.probs = np.array([weights[lang] for lang in self.langs])
        self.seq_len, self.bos_id, self.seed = seq_len, bos_id, seed

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """x, y: (B, T) int64; and tokens drawn per language, (n_langs,) int64."""
        rng = np.random.default_rng((self.seed, step))
        which = rng.choice(len(self.langs), size=batch_size, p=self.probs)
        T = self.seq_len
        y = np.empty((batch_size, T), dtype=np.int64)
        for row, li in enumerate(which):
            stream = self.streams[li]
            start = int(rng.integers(0, len(stream) - T + 1))
            y[row] = stream[start : start + T]
        x = np.empty_like(y)
        x[:, 0] = self.bos_id
        x[:, 1:] = y[:, :-1]
        counts = np.bincount(which, minlength=len(self.langs)) * T
        return torch.from_numpy(x), torch.from_numpy(y), counts
