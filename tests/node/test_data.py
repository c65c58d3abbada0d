from pathlib import Path

import pytest

from node.data import read_node_texts
from node.settings import LanguageSlice, NodeSettings
from step_common.errors import StepError


def test_slices_of_a_step_corpus(tiny_corpus: Path, tmp_path: Path) -> None:
    half = LanguageSlice((0.0, 0.5), (0.0, 0.5))
    other = LanguageSlice((0.5, 1.0), (0.5, 1.0))
    a = read_node_texts(NodeSettings("a", tiny_corpus, {"de": half}, tmp_path))
    b = read_node_texts(NodeSettings("b", tiny_corpus, {"de": other}, tmp_path))
    full = read_node_texts(
        NodeSettings("f", tiny_corpus, {"de": LanguageSlice((0, 1), (0, 1))}, tmp_path)
    )
    assert a[0]["de"] + b[0]["de"] == full[0]["de"]  # disjoint, together everything
    assert a[1]["de"] + b[1]["de"] == full[1]["de"]


def test_an_own_folder_holds_out_every_twentieth_paragraph(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "fi.txt").write_text("".join(f"Kappale numero {i}.\n" for i in range(100)), "utf-8")
    train, valid = read_node_texts(NodeSettings("n", data, None, tmp_path / "state"))
    assert train["fi"].count("\n") == 95 and valid["fi"].count("\n") == 5
    assert "Kappale numero 19.\n" in valid["fi"] and "Kappale numero 19.\n" not in train["fi"]


def test_an_empty_share_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    tiny = LanguageSlice((0.0, 1e-6), (0.0, 1e-6))
    with pytest.raises(StepError, match=r"share of \['de'\] holds no paragraph"):
        read_node_texts(NodeSettings("a", tiny_corpus, {"de": tiny}, tmp_path))


def test_token_cache_is_reused_and_follows_data_changes(tmp_path: Path) -> None:
    import os

    import numpy as np

    from node import data as node_data
    from step_model.tokenizer import ByteTokenizer

    folder = tmp_path / "data"
    folder.mkdir()
    text = folder / "fi.txt"
    text.write_text("".join(f"Kappale {i}.\n" for i in range(40)), "utf-8")
    settings = NodeSettings("n", folder, None, tmp_path / "state")
    tok = ByteTokenizer()
    first = node_data.load_node_data(settings, tok)
    assert len(list((tmp_path / "state" / "tokens").iterdir())) == 1
    calls = []
    real = node_data.read_node_texts
    node_data.read_node_texts = lambda s: calls.append(1) or real(s)  # type: ignore[assignment]
    try:
        again = node_data.load_node_data(settings, tok)
        assert calls == []  # served from the cache
        assert np.array_equal(again.train["fi"].tokens, first.train["fi"].tokens)
        assert again.valid["fi"].n_bytes == first.valid["fi"].n_bytes
        text.write_text(text.read_text("utf-8") + "Uusi kappale.\n", "utf-8")
        os.utime(text, ns=(1, 1))
        changed = node_data.load_node_data(settings, tok)
        assert calls == [1] and changed.train["fi"].n_bytes > first.train["fi"].n_bytes
        assert len(list((tmp_path / "state" / "tokens").iterdir())) == 1  # old cache dropped
    finally:
        node_data.read_node_texts = real  # type: ignore[assignment]
