from pathlib import Path

import numpy as np
import pytest

from step_common.errors import StepError
from step_model.corpus import read_step_corpus
from step_model.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    balanced_sample,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)


@pytest.fixture(scope="module")
def udhr(step35: Path) -> dict[str, str]:
    """The declaration in all 35 languages: every script of the corpus."""
    return read_step_corpus(step35, "udhr")


@pytest.fixture(scope="module")
def bpe(step35: Path) -> BPETokenizer:
    texts = read_step_corpus(step35, "valid")
    return train_bpe(balanced_sample(texts, 20_000), 1024)


def test_byte_tokenizer_is_lossless_on_every_language(udhr: dict[str, str]) -> None:
    tok = ByteTokenizer()
    assert len(udhr) == 35
    for lang, text in udhr.items():
        ids = tok.encode(text)
        assert tok.decode(ids) == text, lang
        assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


def test_bpe_is_lossless_on_every_language_and_counts_bytes_exactly(
    udhr: dict[str, str], bpe: BPETokenizer
) -> None:
    for lang, text in udhr.items():
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text, lang
        assert int(bpe.token_bytes()[ids].sum()) == len(text.encode("utf-8")), lang


def test_bpe_compresses_greek_and_cyrillic_fairly(udhr: dict[str, str], bpe: BPETokenizer) -> None:
    """A balanced sample keeps Greek/Bulgarian within 2x of English tokens per character."""
    cpt = {lang: len(udhr[lang]) / len(bpe.encode(udhr[lang])) for lang in ("en", "el", "bg")}
    assert cpt["el"] > cpt["en"] / 2 and cpt["bg"] > cpt["en"] / 2, cpt
    assert cpt["en"] > 1.5, cpt  # it does merge


def test_bpe_round_trips_through_its_file(tmp_path: Path, bpe: BPETokenizer) -> None:
    save_tokenizer(bpe, tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    text = "Όλοι οι άνθρωποι γεννιούνται ελεύθεροι. Všichni lidé rodí se svobodní."
    assert np.array_equal(again.encode(text), bpe.encode(text))
    assert again.vocab_size == bpe.vocab_size == 1024
    assert again.bos_id == bpe.bos_id


def test_byte_tokenizer_round_trips_through_its_file(tmp_path: Path) -> None:
    save_tokenizer(ByteTokenizer(), tmp_path / "tok.json")
    assert isinstance(load_tokenizer(tmp_path / "tok.json"), ByteTokenizer)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), ("{not json", "not valid JSON"), ('{"a": 1}', "neither")],
)
def test_bad_tokenizer_files_are_refused(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "tok.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StepError, match=message):
        load_tokenizer(path)


def test_too_small_vocab_is_refused() -> None:
    with pytest.raises(StepError, match="too small"):
        train_bpe(["some text"], 100)


def test_balanced_sample_caps_each_language() -> None:
    texts = {"en": "a b c d\n" * 1000, "el": "α β γ δ\n" * 200, "ga": "Dia duit\n" * 3}
    sample = balanced_sample(texts, 800)
    chars = {lang: sum(len(p) for p in sample if p in texts[lang]) for lang in texts}
    # Characters, not bytes, are balanced: Greek gets 800 characters (1,200 bytes) too.
    assert chars == {"en": 800, "el": 800, "ga": 27}
