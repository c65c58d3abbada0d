"""A node's own settings: where its text is, which languages (and which part of them) it holds,
where it keeps its state. They come from the node itself, never from the coordinator: from
``context.node_config`` in a deployment, from the simulation config's ``institutions`` list in a
simulation (each virtual institution is one entry, chosen by Flower's ``partition-id``).

In a simulation every institution reads the same corpus. An institution's share of a language
(``{el: 1.0, en: 0.25}``) becomes a disjoint slice of that language's paragraphs: institutions
holding the same language get consecutive slices of its training text, and of its held-out text
in the same proportions, so that together they hold each held-out paragraph exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.privacy_config import PrivacyConfig, privacy_from_dict
from step_common.errors import StepError
from step_model.corpus import resolve_corpus

_LANG_RE = re.compile(r"^[a-z]{2,3}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LanguageSlice:
    """Fractions [lo, hi) of a language's paragraphs: one range for train/, one for valid/."""

    train: tuple[float, float]
    valid: tuple[float, float]


WHOLE = LanguageSlice((0.0, 1.0), (0.0, 1.0))


@dataclass(frozen=True)
class NodeSettings:
    name: str
    """The institution's name (a folder name: letters, digits, '-', '_', '.')."""
    data: Path
    """A STEP-35 style corpus, or a folder of the institution's own .txt/.jsonl files."""
    languages: dict[str, LanguageSlice] | None
    """Languages held and which part of each; None: every language in ``data``, whole."""
    state_dir: Path
    """Where the node keeps its inner optimizer state and data position between rounds."""
    holdout_fraction: float = 0.05
    """Share of paragraphs held out for evaluation when ``data`` has no valid/ split."""
    privacy: PrivacyConfig | None = None
    """Local differential privacy (DP-SGD with a budget); None: no local DP."""
    device: str = "cpu"
    """Where the node trains and evaluates: 'cpu', 'cuda', or 'auto' (cuda when visible)."""
    encoding: str | None = None
    """Text encoding of the node's own .txt/.jsonl files when they are not UTF-8."""
    key: Path | None = None
    """The node's private key (a deployed node): it signs the privacy ledger and the epsilon
    the node reports. None in a simulation (no keys)."""


def parse_shares(entry: dict[str, Any], where: str) -> dict[str, float]:
    languages = entry.get("languages")
    if not isinstance(languages, dict) or not languages:
        raise StepError(f"{where}.languages must map language codes to shares, e.g. {{el: 1.0}}")
    shares = {}
    for lang, share in languages.items():
        if not isinstance(lang, str) or not _LANG_RE.match(lang):
            raise StepError(f"{where}.languages: {lang!r} is not a language code like 'de'")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise StepError(f"{where}.languages.{lang}: share {share!r} must be in (0, 1]")
        shares[lang] = float(share)
    return shares


def institution_slices(
    institutions: list[dict[str, Any]], source: str
) -> list[dict[str, LanguageSlice]]:
    """Per institution, the slice of every language it holds (see the module docstring)."""
    shares = [
        parse_shares(inst, f"{source}: institutions[{i}]") for i, inst in enumerate(institutions)
    ]
    totals: dict[str, float] = {}
    for s in shares:
        for lang, share in s.items():
            totals[lang] = totals.get(lang, 0.0) + share
    over = {lang: round(t, 4) for lang, t in totals.items() if t > 1 + 1e-9}
    if over:
        raise StepError(
            f"{source}: the shares of {over} add up to more than 1 across institutions: "
            "a paragraph can be held by one institution only; lower the shares"
        )
    used = dict.fromkeys(totals, 0.0)
    slices = []
    for s in shares:
        mine = {}
        for lang, share in s.items():
            lo, hi, total = used[lang], used[lang] + share, totals[lang]
            mine[lang] = LanguageSlice(train=(lo, hi), valid=(lo / total, hi / total))
            used[lang] = hi
        slices.append(mine)
    return slices


def sim_node_settings(
    sim: dict[str, Any], partition_id: int, run_dir: Path, source: str
) -> NodeSettings:
    """The settings of virtual institution ``partition_id`` of a simulation config."""
    institutions = sim.get("institutions")
    if not isinstance(institutions, list) or not institutions:
        raise StepError(f"{source}: 'institutions' must be a non-empty list")
    if not 0 <= partition_id < len(institutions):
        raise StepError(
            f"partition-id {partition_id} has no institution in {source} "
            f"({len(institutions)} listed): run with num-supernodes = {len(institutions)}"
        )
    entry = institutions[partition_id]
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StepError(
            f"{source}: institutions[{partition_id}].name {name!r} must be a short "
            "name of letters, digits, '-', '_' or '.'"
        )
    corpus = sim.get("corpus")
    if corpus is not None and not isinstance(corpus, str):
        raise StepError(f"{source}: 'corpus' must be a folder path or null")
    slices = institution_slices(institutions, source)[partition_id]
    # An institution's own ``privacy`` (null: none) overrides the config's top-level one.
    where = f"{source}: institutions[{partition_id}]"
    if "privacy" in entry:
        privacy = privacy_from_dict(entry["privacy"], where)
    else:
        privacy = privacy_from_dict(sim.get("privacy"), source)
    return NodeSettings(
        name, resolve_corpus(corpus or None), slices, run_dir / "nodes" / name, privacy=privacy
    )
