"""Per-language corpus statistics: bytes, paragraphs, characters, tokens, characters per token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from step_model.data import tokenize_texts
from step_model.tokenizer import Tokenizer


@dataclass(frozen=True)
class LanguageStats:
    bytes: int
    paragraphs: int
    chars: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "chars_per_token": round(self.chars_per_token, 4)}


def language_stats(texts: Mapping[str, str], tokenizer: Tokenizer) -> dict[str, LanguageStats]:
    streams = tokenize_texts(texts, tokenizer)
    return {
        lang: LanguageStats(
            bytes=streams[lang].n_bytes,
            paragraphs=text.count("\n"),
            chars=len(text),
            tokens=len(streams[lang].tokens),
        )
        for lang, text in texts.items()
    }
