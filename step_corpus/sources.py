"""What the STEP-35 corpus is made of: its languages, its Debian sources, and locale names.

Each source ships one folder (or, for LibreOffice, one package) per locale. Locale names vary
between projects ("de", "de_DE", "de-DE", "C" for GNOME's English original), so every corpus
language has an ordered list of accepted names and a source contributes the first one it ships.
Only the home variety counts: pt_BR is not pt, sr@latin is not the (Cyrillic) sr, so that each
language's text is one written standard.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from step_common.errors import StepError

# The 24 official EU languages, then the 11 others, in the reference corpus's order.
STEP35_LANGUAGES: tuple[str, ...] = (
    "bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "ga", "hr", "hu", "it", "lt",
    "lv", "mt", "nl", "pl", "pt", "ro", "sk", "sl", "sv",
    "ca", "eu", "gl", "nb", "is", "uk", "sr", "bs", "mk", "sq", "tr",
)  # fmt: skip

# The country of each language's home variety, for names like "sv_SE" or "sv-SE".
_HOME_REGION = {
    "bg": "bg", "cs": "cz", "da": "dk", "de": "de", "el": "gr", "en": "us", "es": "es",
    "et": "ee", "fi": "fi", "fr": "fr", "ga": "ie", "hr": "hr", "hu": "hu", "it": "it",
    "lt": "lt", "lv": "lv", "mt": "mt", "nl": "nl", "pl": "pl", "pt": "pt", "ro": "ro",
    "sk": "sk", "sl": "si", "sv": "se", "ca": "es", "eu": "es", "gl": "es", "nb": "no",
    "is": "is", "uk": "ua", "sr": "rs", "bs": "ba", "mk": "mk", "sq": "al", "tr": "tr",
}  # fmt: skip

# Extra names, tried after the two regular ones. English: GNOME calls its original "C";
# Wesnoth and Freeciv ship British English only.
_EXTRA_LOCALES = {"en": ("c", "en_gb"), "nb": ("no",)}


def normalize_locale(name: str) -> str:
    """Compare locale names case- and separator-blind: "en-US" and "en_us" are one name."""
    return name.lower().replace("-", "_")


def locale_candidates(lang: str) -> tuple[str, ...]:
    """Accepted (normalized) locale names for a corpus language, most preferred first."""
    return (lang, f"{lang}_{_HOME_REGION[lang]}", *_EXTRA_LOCALES.get(lang, ()))


def check_languages(languages: Sequence[str] | None) -> list[str]:
    """The requested languages in corpus order, or a StepError naming the unknown ones."""
    if languages is None:
        return list(STEP35_LANGUAGES)
    requested = [lang.strip() for lang in languages if lang.strip()]
    unknown = sorted(set(requested) - set(STEP35_LANGUAGES))
    if unknown:
        raise StepError(
            f"unknown language code(s) {', '.join(unknown)}: use codes from "
            f"{' '.join(STEP35_LANGUAGES)}"
        )
    if not requested:
        raise StepError("no languages requested: name at least one, e.g. --languages et,el")
    return [lang for lang in STEP35_LANGUAGES if lang in requested]


@dataclass(frozen=True)
class Source:
    """One text source: the Debian packages it comes in and where its text files lie.

    ``member`` matches a file path inside the package and captures its locale. Either
    ``packages`` names fixed packages (all locales inside), or ``package_per_locale`` is a
    template like "libreoffice-help-{locale}" (one package per locale, locale as Debian
    spells it in package names: lowercase with hyphens).
    """

    name: str
    license: str
    member: re.Pattern[str]
    packages: tuple[str, ...] = ()
    package_per_locale: str | None = None
    # Translated documents fall back to the English original paragraph by paragraph, so a
    # paragraph that also occurs in the English version is untranslated and is dropped.
    # (Catalogs need no such step: their untranslated entries are found entry by entry.)
    compare_with_english: bool = False

    def locale_package(self, locale: str) -> str:
        assert self.package_per_locale is not None
        return self.package_per_locale.format(locale=locale.replace("_", "-"))


WESNOTH_CAMPAIGNS = (
    "did", "dm", "dw", "ei", "httt", "l", "low", "nr", "sof", "sota", "sotbe", "thot", "trow",
    "tsg", "ttb", "utbs",
)  # fmt: skip

# Order matters: exact duplicates are removed keeping the first source that has a paragraph.
SOURCES: tuple[Source, ...] = (
    Source(
        name="libreoffice-help",
        license="MPL-2.0",
        member=re.compile(r"usr/share/libreoffice/help/(?P<locale>[^/]+)/text/.+\.(html|xhp)"),
        package_per_locale="libreoffice-help-{locale}",
        compare_with_english=True,
    ),
    Source(
        name="wesnoth",
        license="GPL-2.0-or-later",
        member=re.compile(
            r"usr/share/games/wesnoth/[^/]+/locale/(?P<locale>[^/]+)/LC_MESSAGES/[^/]+\.mo"
        ),
        packages=("wesnoth-1.16-data", *(f"wesnoth-1.16-{c}" for c in WESNOTH_CAMPAIGNS)),
    ),
    Source(
        name="gnome-user-docs",
        license="CC-BY-SA-3.0",
        member=re.compile(r"usr/share/help/(?P<locale>[^/]+)/[^/]+/[^/]+\.page"),
        packages=("gnome-user-docs",),
        compare_with_english=True,
    ),
    Source(
        name="installation-guide",
        license="GPL-2.0-or-later",
        member=re.compile(r"usr/share/doc/installation-guide-amd64/(?P<locale>[^/]+)/[^/]+\.html"),
        packages=("installation-guide-amd64",),
        compare_with_english=True,
    ),
    Source(
        name="debian-handbook",
        license="GPL-2.0-or-later OR CC-BY-SA-3.0",
        member=re.compile(r"usr/share/doc/debian-handbook/html/(?P<locale>[^/]+)/[^/]+\.html"),
        packages=("debian-handbook",),
        compare_with_english=True,
    ),
    Source(
        name="freeciv",
        license="GPL-2.0-or-later",
        member=re.compile(r"usr/share/locale/(?P<locale>[^/]+)/LC_MESSAGES/freeciv-[^/]+\.mo"),
        packages=("freeciv-data",),
    ),
)
