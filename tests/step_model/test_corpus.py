import json
from pathlib import Path

import pytest

from step_common.errors import StepError
from step_model.corpus import (
    EU_LANGUAGES,
    LanguageSelection,
    read_corpus,
    read_step_corpus,
    read_text_dir,
    resolve_corpus,
)


def test_reads_the_selected_languages(tiny_corpus: Path) -> None:
    texts = read_step_corpus(tiny_corpus, "train", LanguageSelection.parse("el,et"))
    assert sorted(texts) == ["el", "et"]
    assert "Ο" in texts["el"] or "ο" in texts["el"]
    assert texts["et"].endswith("\n") and "\n\n" not in texts["et"]


def test_a_group_takes_what_exists_and_the_shared_corpus_lacks_maltese(step35: Path) -> None:
    texts = read_step_corpus(step35, "valid", LanguageSelection.parse("eu"))
    assert "mt" not in texts and len(texts) == len(EU_LANGUAGES) - 1


def test_a_missing_language_is_named_with_what_is_available(tiny_corpus: Path) -> None:
    with pytest.raises(StepError, match=r"\['fi'\].*available: de,el,et"):
        read_step_corpus(tiny_corpus, "train", LanguageSelection.parse("de,fi"))


def test_bad_language_codes_and_splits(tiny_corpus: Path) -> None:
    with pytest.raises(StepError, match="not language codes"):
        LanguageSelection.parse("de,German")
    with pytest.raises(StepError, match="unknown split"):
        read_step_corpus(tiny_corpus, "test")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"abc\x00\x01def", "looks binary"),
        (b"caf\xe9 au lait", "not UTF-8 .*0xe9"),
    ],
)
def test_unreadable_files_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "de.txt").write_bytes(content)
    with pytest.raises(StepError, match=message) as err:
        read_text_dir(tmp_path, LanguageSelection.parse("de"))
    assert "de.txt" in str(err.value)


def test_institution_folder_with_txt_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "de.txt").write_text("Erste Zeile.\n\nZweite Zeile.  \n", encoding="utf-8")
    (tmp_path / "fi").mkdir()
    (tmp_path / "fi" / "notes.txt").write_text("Hyvää päivää.\n", encoding="utf-8")
    (tmp_path / "archive.el.txt").write_text("Καλημέρα.\n", encoding="utf-8")
    records = [
        {"text": "Noch ein Absatz.", "lang": "de"},
        {"text": "Tere hommikust.", "lang": "et"},
    ]
    (tmp_path / "mixed.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records), encoding="utf-8"
    )
    texts = read_text_dir(tmp_path)
    assert texts == {
        "de": "Erste Zeile.\nZweite Zeile.\nNoch ein Absatz.\n",
        "el": "Καλημέρα.\n",
        "et": "Tere hommikust.\n",
        "fi": "Hyvää päivää.\n",
    }
    assert read_corpus(tmp_path, "train", LanguageSelection.parse("fi")) == {
        "fi": "Hyvää päivää.\n"
    }


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", "Some text.", "cannot tell the language"),
        ("x.jsonl", '{"text": "hi"}', "no valid 'lang'"),
        ("de.jsonl", "{broken", "not valid JSON"),
        ("de.jsonl", '{"body": "hi"}', "no string 'text'"),
    ],
)
def test_institution_folder_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(StepError, match=message):
        read_text_dir(tmp_path)


def test_empty_or_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(StepError, match=r"no \.txt or \.jsonl"):
        read_text_dir(tmp_path)
    with pytest.raises(StepError, match="not found"):
        read_text_dir(tmp_path / "nope")
    with pytest.raises(StepError, match="not found"):
        resolve_corpus(tmp_path / "nope")


def test_resolve_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEP_CORPUS", str(tmp_path))
    assert resolve_corpus(None) == tmp_path
    monkeypatch.setenv("STEP_CORPUS", str(tmp_path / "missing"))
    with pytest.raises(StepError, match="STEP_CORPUS"):
        resolve_corpus(None)


@pytest.mark.parametrize(
    ("lang", "encoding", "hint"),
    [
        ("el", "cp1253", "Greek text in WINDOWS-1253"),
        ("el", "iso-8859-7", "Greek text in WINDOWS-1253"),  # the two differ in a few bytes
        ("bg", "koi8-r", "Bulgarian text in KOI8-R"),
        ("bg", "cp1251", "Bulgarian text in WINDOWS-1251"),
        ("pl", "iso-8859-2", "Polish text in ISO-8859-2"),
    ],
)
def test_legacy_encodings_get_a_hint_by_script(
    tmp_path: Path, step35: Path, lang: str, encoding: str, hint: str
) -> None:
    text = (step35 / "train" / f"{lang}.txt").read_text(encoding="utf-8")[:20_000]
    (tmp_path / f"{lang}.txt").write_bytes(text.encode(encoding, errors="replace"))
    with pytest.raises(StepError, match="not UTF-8") as err:
        read_text_dir(tmp_path)
    assert hint in str(err.value) and "latin1" not in str(err.value)
    assert "`encoding: " in str(err.value)
    # ... and with the encoding named, the text reads as it was written
    assert read_text_dir(tmp_path, encoding=encoding)[lang].startswith(text.split("\n")[0][:40])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("Καλημέρα κόσμε\n".encode("utf-16"), "is UTF-16 .*byte-order mark"),
        (("Guten Tag, Welt\n" * 20).encode("utf-16-le"), "UTF-16 without a byte-order mark"),
    ],
)
def test_utf16_is_named_as_utf16(tmp_path: Path, raw: bytes, message: str) -> None:
    (tmp_path / "de.txt").write_bytes(raw)
    with pytest.raises(StepError, match=message):
        read_text_dir(tmp_path)
    assert read_text_dir(tmp_path, encoding="utf-16" if raw[:2] == b"\xff\xfe" else "utf-16-le")


def test_a_wrong_encoding_setting_is_named(tmp_path: Path) -> None:
    (tmp_path / "de.txt").write_bytes("Grüße\n".encode())
    with pytest.raises(StepError, match=r"is not ascii .*`encoding:` setting"):
        read_text_dir(tmp_path, encoding="ascii")
