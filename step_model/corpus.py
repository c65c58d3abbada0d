"""Reading text corpora: the STEP-35 layout and institutions' own folders of .txt / .jsonl files.

Everything returns ``{language: text}``, paragraphs joined by ``"\\n"`` (the newline is a real byte
of the text, in training and in evaluation alike). Files that cannot be read as text fail with a
StepError naming the file: missing, empty, binary (NUL bytes) or not UTF-8.

STEP-35 layout (see the corpus README): ``train/<lang>.txt``, ``valid/<lang>.txt``,
``udhr/<lang>.txt`` (the same declaration in every language, evaluation only), ``MANIFEST.json``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import charset_normalizer

from step_common.errors import StepError

SPLITS = ("train", "valid", "udhr")
EU_LANGUAGES = (
    "bg",
    "cs",
    "da",
    "de",
    "el",
    "en",
    "es",
    "et",
    "fi",
    "fr",
    "ga",
    "hr",
    "hu",
    "it",
    "lt",
    "lv",
    "mt",
    "nl",
    "pl",
    "pt",
    "ro",
    "sk",
    "sl",
    "sv",
)
STEP35_LANGUAGES = (*EU_LANGUAGES, "ca", "eu", "gl", "nb", "is", "uk", "sr", "bs", "mk", "sq", "tr")
LANGUAGE_GROUPS = {"eu": EU_LANGUAGES, "all": STEP35_LANGUAGES}
_LANG_RE = re.compile(r"^[a-z]{2,3}$")
# Where a source checkout finds the shared corpus (relative to the project root).
_SHARED_CORPUS = Path("..") / "shared" / "corpus" / "step35"
_BUILT_CORPUS = Path("data") / "step35"


@dataclass(frozen=True)
class LanguageSelection:
    """Languages asked for: an explicit list is strict; a group ('eu', 'all') takes what exists."""

    languages: tuple[str, ...] | None
    strict: bool

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None) -> LanguageSelection:
        if spec is None or spec == "" or spec == []:
            return cls(None, strict=False)
        items = [
            s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()
        ]
        if len(items) == 1 and items[0] in LANGUAGE_GROUPS:
            return cls(LANGUAGE_GROUPS[items[0]], strict=False)
        bad = [s for s in items if not _LANG_RE.match(s)]
        if bad:
            raise StepError(
                f"languages {bad} are not language codes: use ISO 639 codes like 'de,el,fi' "
                f"or a group ({', '.join(LANGUAGE_GROUPS)})"
            )
        return cls(tuple(dict.fromkeys(items)), strict=True)


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def resolve_corpus(explicit: str | Path | None = None) -> Path:
    """The corpus: the argument, else $STEP_CORPUS, else the shared STEP-35, else data/step35."""
    if explicit:
        path = Path(explicit)
        if not path.is_dir():
            raise StepError(f"corpus folder {path} not found: pass an existing folder")
        return path
    env = os.environ.get("STEP_CORPUS")
    if env:
        if not Path(env).is_dir():
            raise StepError(
                f"STEP_CORPUS={env} is not a folder: point it at a STEP-35 style corpus"
            )
        return Path(env)
    for candidate in (project_root() / _SHARED_CORPUS, project_root() / _BUILT_CORPUS):
        if (candidate / "train").is_dir():
            return candidate.resolve()
    raise StepError(
        "no corpus found: set STEP_CORPUS, pass --corpus, or build one with "
        f"`step-model corpus build {_BUILT_CORPUS}`"
    )


def head_lines(text: str, n_bytes: int) -> str:
    """The first whole lines of ``text`` within ``n_bytes`` UTF-8 bytes (small test corpora)."""
    out, size = [], 0
    for line in text.splitlines(keepends=True):
        size += len(line.encode("utf-8"))
        if size > n_bytes:
            break
        out.append(line)
    return "".join(out)


def read_text_file(path: Path, encoding: str | None = None) -> str:
    """The file as text, or a StepError saying why it cannot be training text and what to do.

    ``encoding``: the file's encoding when it is not UTF-8 (a node's ``encoding:`` setting)."""
    if not path.is_file():
        raise StepError(f"{path} not found: check the path or the language code")
    raw = path.read_bytes()
    if not raw.strip():
        raise StepError(f"{path} is empty: remove it or fill it with text")
    if encoding is not None:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise StepError(
                f"{path} is not {encoding} (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                "fix the `encoding:` setting, or re-encode the file as UTF-8"
            ) from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise StepError(
            f"{path} is UTF-16 (it starts with a UTF-16 byte-order mark): re-encode it as UTF-8 "
            "(`iconv -f UTF-16 -t UTF-8`), or set `encoding: utf-16`"
        )
    if b"\x00" in raw:
        if _looks_utf16(raw):
            raise StepError(
                f"{path} looks like UTF-16 without a byte-order mark (every other byte is 0): "
                "re-encode it as UTF-8 (`iconv -f UTF-16LE -t UTF-8`), or set "
                "`encoding: utf-16-le`"
            )
        raise StepError(
            f"{path} looks binary (contains NUL bytes): only UTF-8 text can be trained on"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StepError(
            f"{path} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): "
            f"{_encoding_hint(raw)}"
        ) from None


def _looks_utf16(raw: bytes) -> bool:
    """Mostly-ASCII text in UTF-16 has a NUL in every other byte."""
    head = raw[:4096]
    return len(head) >= 4 and max(head[0::2].count(0), head[1::2].count(0)) > 0.4 * len(head) / 2


def _encoding_hint(raw: bytes) -> str:
    """What to do with a file that is not UTF-8: its likely encoding and language, guessed by
    charset-normalizer (e.g. Greek in Windows-1253, Bulgarian in KOI8-R)."""
    best = charset_normalizer.from_bytes(raw[:200_000]).best()
    if best is None:
        return "re-encode it as UTF-8"
    name = codecs.lookup(best.encoding).name  # cp1253, koi8-r, iso8859-2, ...
    iconv = re.sub(r"^cp(\d+)$", r"WINDOWS-\1", name).replace("iso8859", "ISO-8859").upper()
    return (
        f"it looks like {best.language} text in {iconv}: re-encode it as UTF-8 "
        f"(`iconv -f {iconv} -t UTF-8`), or set `encoding: {name}` in node.yaml"
    )


def normalize(text: str) -> str:
    """Paragraphs one per line, no blank lines, no trailing whitespace, final newline."""
    lines = (line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    return "".join(line + "\n" for line in lines if line.strip())


def available_languages(root: Path, split: str) -> list[str]:
    folder = root / split
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.txt") if p.stat().st_size > 0)


def read_step_corpus(
    root: Path, split: str, selection: LanguageSelection = LanguageSelection(None, False)
) -> dict[str, str]:
    """``{lang: text}`` of one split of a STEP-35 style corpus."""
    if split not in SPLITS:
        raise StepError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    folder = root / split
    if not folder.is_dir():
        raise StepError(
            f"{folder} not found: {root} is not a STEP-35 style corpus "
            "(expected train/, valid/, udhr/ with <lang>.txt files)"
        )
    present = available_languages(root, split)
    if selection.languages is None:
        wanted = present
    elif selection.strict:
        missing = [lang for lang in selection.languages if lang not in present]
        if missing:
            raise StepError(
                f"no {split} text for {missing} in {folder} (missing or empty "
                f"{', '.join(m + '.txt' for m in missing)}): drop them from --languages; "
                f"available: {','.join(present)}"
            )
        wanted = list(selection.languages)
    else:
        wanted = [lang for lang in selection.languages if lang in present]
    if not wanted:
        raise StepError(f"no {split} text for the selected languages in {folder}")
    return {lang: normalize(read_text_file(folder / f"{lang}.txt")) for lang in wanted}


def is_step_corpus(root: Path) -> bool:
    return (root / "train").is_dir() and (
        (root / "MANIFEST.json").is_file() or (root / "valid").is_dir()
    )


def _language_of_file(path: Path, root: Path) -> str | None:
    """``report.de.txt``, ``de.txt`` or ``de/report.txt`` -> ``"de"``; None if no name says."""
    parts = path.name.split(".")  # "report.de.txt" -> ["report", "de", "txt"]
    candidates = ([parts[-2]] if len(parts) >= 3 else []) + [parts[0]]
    if path.parent != root:
        candidates.append(path.parent.name)
    return next((c for c in candidates if _LANG_RE.match(c)), None)


def _read_jsonl(
    path: Path, file_lang: str | None, encoding: str | None = None
) -> Iterable[tuple[str, str]]:
    text = read_text_file(path, encoding)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise StepError(
                f"{path}:{lineno} is not valid JSON ({e.msg}): fix or remove the line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise StepError(
                f"{path}:{lineno} has no string 'text' field: each line must be "
                '{"text": "...", "lang": "xx"}'
            )
        lang = record.get("lang", record.get("language", file_lang))
        if not isinstance(lang, str) or not _LANG_RE.match(lang):
            raise StepError(
                f"{path}:{lineno} has no valid 'lang' field and the file name names no "
                'language: add "lang": "xx" to the record or name the file <lang>.jsonl'
            )
        yield lang, record["text"]


def read_text_dir(
    root: Path,
    selection: LanguageSelection = LanguageSelection(None, False),
    encoding: str | None = None,
) -> dict[str, str]:
    """An institution's own folder: .txt files (one language per file) and .jsonl records.

    The language of a .txt file comes from its name (``de.txt``, ``report.de.txt``) or its folder
    (``de/report.txt``); a .jsonl record carries ``"lang"`` or inherits the file's language.
    """
    if not root.is_dir():
        raise StepError(f"data folder {root} not found: create it or fix the path in your config")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
    if not files:
        raise StepError(f"{root} holds no .txt or .jsonl files: add text files named <lang>.txt")
    chunks: dict[str, list[str]] = {}
    for path in files:
        file_lang = _language_of_file(path, root)
        if path.suffix == ".txt":
            if file_lang is None:
                raise StepError(
                    f"cannot tell the language of {path}: name it <lang>.txt, "
                    "<name>.<lang>.txt, or put it in a <lang>/ folder"
                )
            chunks.setdefault(file_lang, []).append(read_text_file(path, encoding))
        else:
            for lang, text in _read_jsonl(path, file_lang, encoding):
                chunks.setdefault(lang, []).append(text)
    texts = {lang: normalize("\n".join(parts)) for lang, parts in sorted(chunks.items())}
    texts = {lang: t for lang, t in texts.items() if t}
    if selection.languages is not None:
        missing = [lang for lang in selection.languages if lang not in texts]
        if missing and selection.strict:
            raise StepError(
                f"no text for {missing} in {root}: drop them from the languages or add "
                f"files; found: {','.join(texts)}"
            )
        texts = {lang: texts[lang] for lang in selection.languages if lang in texts}
    return texts


def read_corpus(root: Path, split: str, selection: LanguageSelection) -> dict[str, str]:
    """A STEP-35 style corpus split, or (train only) a plain folder of an institution's text."""
    if is_step_corpus(root):
        return read_step_corpus(root, split, selection)
    if split != "train":
        raise StepError(
            f"{root} is not a STEP-35 style corpus, so it has no {split!r} split: "
            "add train/ and valid/ folders"
        )
    return read_text_dir(root, selection)
