import math

import numpy as np
import torch
from torch import nn

from step_model.data import tokenize_texts
from step_model.evaluate import bits_per_byte, language_nll, mean_bpb
from step_model.tokenizer import ByteTokenizer


class Uniform(nn.Module):
    """Predicts every token with equal probability."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, self.vocab) + self.dummy


class Oracle(nn.Module):
    """Knows the text: puts almost all mass on the true next byte."""

    def __init__(self, text_ids: np.ndarray, vocab: int, seq_len: int) -> None:
        super().__init__()
        self.ids, self.vocab = torch.from_numpy(text_ids.astype(np.int64)), vocab
        self.seq_len = seq_len
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = torch.full((*idx.shape, self.vocab), -30.0)
        # Inputs are [bos, t0, t1, ...]: position j predicts the j-th token of the window.
        for b in range(idx.shape[0]):
            window = self.window_of(idx[b])
            out[b, torch.arange(len(window)), window] = 30.0
        return out + self.dummy

    def window_of(self, x: torch.Tensor) -> torch.Tensor:
        for start in range(0, len(self.ids), self.seq_len):
            w = self.ids[start : start + self.seq_len]
            if len(w) == len(x) and torch.equal(w[:-1], x[1:]):
                return w
        raise AssertionError("window not found")


def test_uniform_model_scores_log2_vocab_per_byte() -> None:
    tok = ByteTokenizer()
    streams = tokenize_texts({"de": "Hallo Welt.\n" * 50, "el": "Γειά σου.\n" * 20}, tok)
    bpb = bits_per_byte(Uniform(tok.vocab_size), streams, tok.token_bytes(), seq_len=32, bos_id=256)
    assert sorted(bpb) == ["de", "el"]
    assert all(abs(v - math.log2(tok.vocab_size)) < 1e-5 for v in bpb.values())
    assert abs(mean_bpb(bpb) - math.log2(259)) < 1e-5


def test_every_byte_is_predicted_once_including_the_last_short_window() -> None:
    tok = ByteTokenizer()
    text = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.\n" * 3
    streams = tokenize_texts({"de": text}, tok)
    bpb = bits_per_byte(
        Oracle(streams["de"].tokens, 259, 50), streams, tok.token_bytes(), seq_len=50, bos_id=256
    )
    assert bpb["de"] < 1e-6  # near-certain predictions cost nothing; any miss would cost ~87 bits


def test_max_tokens_caps_the_evaluation() -> None:
    """The cap is in tokens: 64 of the 1000 (a byte each here) are predicted, and the NLL is
    that of those 64 alone."""
    tok = ByteTokenizer()
    stream = tokenize_texts({"de": "a" * 1000}, tok)["de"]
    nll, n_bytes = language_nll(
        Uniform(259), stream, tok.token_bytes(), seq_len=32, bos_id=256, max_tokens=64
    )
    assert n_bytes == 64 and abs(nll - 64 * math.log(259)) < 1e-3
    whole = language_nll(Uniform(259), stream, tok.token_bytes(), seq_len=32, bos_id=256)
    assert whole[1] == 1000
