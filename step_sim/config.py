"""The simulation config: a corpus, the federation's settings, and the virtual institutions.

    corpus: null                # null: $STEP_CORPUS, then ../shared/corpus/step35
    federation: {...}           # coordinator/config.py: FederationConfig
    centralized_lr: 3.0e-3      # the baseline's peak lr (default: federation.inner_lr)
    privacy: null               # local DP for every institution (node/privacy_config.py)
    institutions:
      - name: hellenic-univ
        languages: {el: 1.0, en: 0.125}   # share of each language's text it holds
        privacy: {...}                    # optional: this institution's own (null: none)

The file is a pydantic model (``SimFile``), validated in full at load: every key, every share,
with one-line messages naming the file and the key path. Each virtual institution becomes a
node.yaml of its own (node_files.py): the nodes never read this file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, model_validator

from coordinator.config import FederationConfig, federation_from_dict
from node.privacy_config import PrivacyConfig
from node.settings import LanguageSlice, NodeSettings
from step_common.errors import StepError
from step_common.fileio import read_yaml
from step_common.typed_config import STRICT, LangCode, Name, YamlFloat, parse_section
from step_model.corpus import resolve_corpus

Share = Annotated[YamlFloat, Field(gt=0, le=1)]


class Institution(BaseModel):
    model_config = STRICT
    name: Name
    """A short name (a folder name): the node's name in logs, metrics and checkpoints."""
    languages: Annotated[dict[LangCode, Share], Field(min_length=1)]
    """Share of each language's text it holds, e.g. {el: 1.0, en: 0.125}."""
    description: str = ""
    kind: str = ""
    """What sort of institution (university, public broadcaster, HPC centre...): the model card
    sums the tokens trained per kind, as the AI Act's training-content summary asks."""
    privacy: PrivacyConfig | None = None
    """Its own local DP (null: none); absent: the file's top-level privacy."""
    gpus: int = Field(default=1, ge=1)
    """Torchrun workers that train its rounds (gloo processes on this machine), FSDP2-sharded
    as on a multi-GPU institution (node.yaml ``resources.gpus``); 1: one device."""


class SimFile(BaseModel):
    """What a simulation config may hold."""

    model_config = STRICT
    description: str = ""
    corpus: str | None = None
    """The corpus folder; null: $STEP_CORPUS, then ../shared/corpus/step35."""
    federation: FederationConfig = FederationConfig()
    centralized_lr: YamlFloat = Field(default=0.0, ge=0)
    """Peak learning rate of the centralized baseline (0: federation.inner_lr)."""
    privacy: PrivacyConfig | None = None
    """Local DP for every institution without its own ``privacy``."""
    institutions: Annotated[list[Institution], Field(min_length=1)]
    """The virtual institutions, one node each."""

    @model_validator(mode="after")
    def _unique_names(self) -> SimFile:
        names = [inst.name for inst in self.institutions]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise StepError(f"institutions: names must be unique, repeated: {repeated}")
        institution_slices(self.institutions)  # shares of one language add up to at most 1
        return self


@dataclass(frozen=True)
class SimConfig:
    source: Path
    corpus: Path
    federation: FederationConfig
    institutions: list[Institution]
    description: str = ""
    centralized_lr: float = 0.0
    """Peak learning rate of the centralized baseline (0: federation.inner_lr). An honest
    baseline is tuned for its own batch, which is nodes x the federation's local batch."""
    privacy: PrivacyConfig | None = None
    """Local DP for every institution without its own ``privacy`` (node/privacy_config.py)."""

    @property
    def baseline_lr(self) -> float:
        return self.centralized_lr or self.federation.inner_lr

    @property
    def names(self) -> list[str]:
        return [inst.name for inst in self.institutions]

    def node_settings(self, run_dir: Path) -> list[NodeSettings]:
        from step_sim.node_files import node_settings  # node_files builds on this module

        return node_settings(self, run_dir)

    def languages(self) -> list[str]:
        return sorted({lang for inst in self.institutions for lang in inst.languages})

    def privacy_of(self, inst: Institution) -> PrivacyConfig | None:
        """An institution's own ``privacy`` (null: none) overrides the file's top-level one."""
        return inst.privacy if "privacy" in inst.model_fields_set else self.privacy

    def to_yaml_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "corpus": str(self.corpus),
            "federation": self.federation.to_dict(),
            "institutions": [inst.model_dump(exclude_unset=True) for inst in self.institutions],
            **({"centralized_lr": self.centralized_lr} if self.centralized_lr else {}),
            **({"privacy": self.privacy.model_dump()} if self.privacy else {}),
        }

    def with_overrides(self, **federation: Any) -> SimConfig:
        values = {k: v for k, v in federation.items() if v is not None}
        return replace(
            self,
            federation=federation_from_dict(
                {**self.federation.to_dict(), **values}, str(self.source)
            ),
        )


def load_sim_config(path: Path) -> SimConfig:
    path = Path(path)
    data = read_yaml(path, "check the path of the simulation config")
    doc = parse_section(SimFile, data, str(path))
    return SimConfig(
        path,
        resolve_corpus(doc.corpus or None).resolve(),
        doc.federation,
        doc.institutions,
        doc.description,
        doc.centralized_lr,
        doc.privacy,
    )


def institution_slices(institutions: list[Institution]) -> list[dict[str, LanguageSlice]]:
    """Per institution, the slice of every language it holds.

    An institution's share of a language (``{el: 1.0, en: 0.25}``) becomes a disjoint slice of
    that language's paragraphs: institutions holding the same language get consecutive slices
    of its training text, and of its held-out text in the same proportions, so that together
    they hold each held-out paragraph exactly once.
    """
    totals: dict[str, float] = {}
    for inst in institutions:
        for lang, share in inst.languages.items():
            totals[lang] = totals.get(lang, 0.0) + share
    over = {lang: round(t, 4) for lang, t in totals.items() if t > 1 + 1e-9}
    if over:
        raise StepError(
            f"institutions: the shares of {over} add up to more than 1 across institutions: "
            "a paragraph can be held by one institution only; lower the shares"
        )
    used = dict.fromkeys(totals, 0.0)
    slices = []
    for inst in institutions:
        mine = {}
        for lang, share in inst.languages.items():
            lo, hi, total = used[lang], used[lang] + share, totals[lang]
            mine[lang] = LanguageSlice(train=(lo, hi), valid=(lo / total, hi / total))
            used[lang] = hi
        slices.append(mine)
    return slices
