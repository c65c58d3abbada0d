"""Bits per byte per language: the tokenizer-independent quality measure.

For a language's held-out stream, consecutive windows of ``seq_len`` tokens are each preceded by
<|bos|> (as in training, data.py), so every token is predicted exactly once. Then

    bpb = (sum of next-token negative log-likelihoods in nats) / ln 2 / (UTF-8 bytes predicted)

where the bytes come from the tokenizer's per-token byte table. Uniform guessing over bytes is 8.0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from step_model.data import TokenStream
from step_model.model import autocast


def _windows(tokens: np.ndarray, seq_len: int, max_tokens: int | None) -> list[np.ndarray]:
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    return [tokens[i : i + seq_len] for i in range(0, len(tokens), seq_len)]


@torch.no_grad()
def language_nll(
    model: nn.Module,
    stream: TokenStream,
    token_bytes: np.ndarray,
    *,
    seq_len: int,
    bos_id: int,
    batch_size: int = 32,
    max_tokens: int | None = None,
) -> tuple[float, int]:
    """(summed NLL in nats, bytes predicted) over one language's stream."""
    device = next(model.parameters()).device
    windows = _windows(stream.tokens, seq_len, max_tokens)
    full = [w for w in windows if len(w) == seq_len]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[w] for w in windows if len(w) < seq_len]  # the last, shorter window
    nll, n_bytes = 0.0, 0
    for group in groups:
        y = torch.from_numpy(np.stack(group).astype(np.int64))  # (b, t)
        x = torch.cat([torch.full((len(group), 1), bos_id, dtype=torch.int64), y[:, :-1]], dim=1)
        with autocast(device):
            logits = model(x.to(device))
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1).to(device), reduction="sum"
        )
        nll += float(loss)
        n_bytes += int(token_bytes[y.numpy()].sum())
    return nll, n_bytes


def bits_per_byte(
    model: nn.Module,
    streams: Mapping[str, TokenStream],
    token_bytes: np.ndarray,
    *,
    seq_len: int,
    bos_id: int,
    batch_size: int = 32,
    max_tokens: int | None = None,
) -> dict[str, float]:
    """{lang: bits per byte}; ``max_tokens`` caps each language (quick evaluations in training)."""
    was_training = model.training
    model.eval()
    try:
        return pooled_bpb(
            (lang, *language_nll(model, streams[lang], token_bytes, seq_len=seq_len,
                                 bos_id=bos_id, batch_size=batch_size, max_tokens=max_tokens))
            for lang in sorted(streams)
        )  # fmt: skip
    finally:
        model.train(was_training)


def pooled_bpb(parts: Iterable[tuple[str, float, int]]) -> dict[str, float]:
    """{lang: bits per byte} of (language, summed NLL in nats, bytes predicted) parts, pooled
    per language in the order given: NLL summed / (ln 2 x bytes summed). The one place bits
    per byte are made, whether the parts are languages, nodes' replies or institutions."""
    nll: dict[str, float] = {}
    n_bytes: dict[str, int] = {}
    for lang, v, b in parts:
        nll[lang] = nll.get(lang, 0.0) + v
        n_bytes[lang] = n_bytes.get(lang, 0) + b
    return {lang: nll[lang] / math.log(2) / n_bytes[lang] for lang in sorted(nll) if n_bytes[lang]}


def mean_bpb(bpb: Mapping[str, float]) -> float:
    """Unweighted mean over languages: every language counts the same, small ones included."""
    return float(sum(bpb.values()) / len(bpb)) if bpb else float("nan")
