import numpy as np
import pytest

from step_common.errors import StepError
from step_model.data import LanguageMixture, TokenStream, mixture_weights, tokenize_texts
from step_model.tokenizer import ByteTokenizer


def streams() -> dict[str, TokenStream]:
    return tokenize_texts({"de": "Guten Tag.\n" * 300, "el": "Καλημέρα.\n" * 30}, ByteTokenizer())


def test_alpha_interpolates_between_uniform_and_proportional() -> None:
    counts = {"big": 1_000_000, "small": 10_000}
    assert mixture_weights(counts, 0.0) == {"big": 0.5, "small": 0.5}
    assert mixture_weights(counts, 1.0)["small"] == pytest.approx(10_000 / 1_010_000)
    mid = mixture_weights(counts, 0.3)["small"]
    assert 10_000 / 1_010_000 < mid < 0.5
    with pytest.raises(StepError, match="alpha"):
        mixture_weights(counts, 1.5)


def test_batches_are_a_function_of_seed_and_step() -> None:
    mix = LanguageMixture(streams(), seq_len=16, alpha=0.3, bos_id=256, seed=7)
    x1, y1, c1 = mix.batch(5, 8)
    x2, y2, _ = LanguageMixture(streams(), 16, 0.3, 256, seed=7).batch(5, 8)
    x3, _, _ = mix.batch(6, 8)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert c1.sum() == 8 * 16


def test_inputs_are_bos_then_targets_shifted() -> None:
    x, y, _ = LanguageMixture(streams(), 16, 0.3, 256, 0).batch(0, 4)
    assert x.shape == y.shape == (4, 16)
    assert (x[:, 0] == 256).all()
    assert np.array_equal(x[:, 1:], y[:, :-1])


def test_sampling_follows_the_weights() -> None:
    mix = LanguageMixture(streams(), 8, alpha=0.0, bos_id=256, seed=0)
    counts = sum(mix.batch(step, 64)[2] for step in range(50))
    share = counts / counts.sum()
    assert abs(share[0] - 0.5) < 0.05  # uniform over the two languages


def test_a_language_shorter_than_a_sequence_is_named() -> None:
    with pytest.raises(StepError, match=r"el \(\d+ tokens\)"):
        LanguageMixture(streams(), seq_len=600, alpha=0.3, bos_id=256, seed=0)


def test_tokenize_keeps_newlines_and_counts_bytes() -> None:
    s = tokenize_texts({"el": "αβ\nγ\n"}, ByteTokenizer())["el"]
    assert s.n_bytes == 8 and len(s.tokens) == 8 and s.tokens[4] == ord("\n")
