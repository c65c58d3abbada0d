"""The simulation config: a corpus, the federation's settings, and the virtual institutions.

    corpus: null                # null: $STEP_CORPUS, then ../shared/corpus/step35
    federation: {...}           # coordinator/config.py: FederationConfig
    centralized_lr: 3.0e-3      # the baseline's peak lr (default: federation.inner_lr)
    privacy: null               # local DP for every institution (node/privacy_config.py)
    institutions:
      - name: hellenic-univ
        languages: {el: 1.0, en: 0.125}   # share of each language's text it holds
        privacy: {...}                    # optional: this institution's own (null: none)

Validated in full at load (every key, every share), with messages naming file and key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from coordinator.config import FederationConfig, federation_from_dict
from node.settings import NodeSettings, institution_slices, sim_node_settings
from step_common.errors import StepError
from step_model.corpus import resolve_corpus

TOP_KEYS = (
    "corpus", "federation", "institutions", "description", "centralized_lr", "privacy"
)  # fmt: skip


@dataclass(frozen=True)
class SimConfig:
    source: Path
    corpus: Path
    federation: FederationConfig
    institutions: list[dict[str, Any]]
    description: str = ""
    centralized_lr: float = 0.0
    """Peak learning rate of the centralized baseline (0: federation.inner_lr). An honest
    baseline is tuned for its own batch, which is nodes x the federation's local batch."""
    privacy: dict[str, Any] | None = None
    """Local DP for every institution without its own ``privacy`` (node/privacy_config.py)."""

    @property
    def baseline_lr(self) -> float:
        return self.centralized_lr or self.federation.inner_lr

    @property
    def names(self) -> list[str]:
        return [str(i["name"]) for i in self.institutions]

    def node_settings(self, run_dir: Path) -> list[NodeSettings]:
        doc = self.to_yaml_dict()
        return [
            sim_node_settings(doc, i, run_dir, str(self.source)) for i in range(len(self.names))
        ]

    def languages(self) -> list[str]:
        return sorted({lang for inst in self.institutions for lang in inst["languages"]})

    def to_yaml_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "corpus": str(self.corpus),
            "federation": self.federation.to_dict(),
            "institutions": self.institutions,
            **({"centralized_lr": self.centralized_lr} if self.centralized_lr else {}),
            **({"privacy": self.privacy} if self.privacy else {}),
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
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepError(f"simulation config {path} not found: check the path") from None
    except yaml.YAMLError as e:
        raise StepError(f"{path} is not valid YAML ({e}): fix the syntax") from None
    if not isinstance(doc, dict):
        raise StepError(f"{path}: expected a mapping with 'federation' and 'institutions'")
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise StepError(f"{path}: unknown top-level keys {unknown}; allowed: {list(TOP_KEYS)}")
    federation = federation_from_dict(doc.get("federation"), str(path))
    institutions = doc.get("institutions")
    if not isinstance(institutions, list) or not institutions:
        raise StepError(
            f"{path}: 'institutions' must be a non-empty list of "
            "{name: ..., languages: {lang: share}}"
        )
    for i, inst in enumerate(institutions):
        allowed = {"name", "languages", "description", "privacy"}
        if not isinstance(inst, dict) or set(inst) - allowed:
            raise StepError(
                f"{path}: institutions[{i}] may only have name, languages, description, privacy"
            )
    names = [inst.get("name") for inst in institutions]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise StepError(f"{path}: institution names must be unique, repeated: {dupes}")
    institution_slices(institutions, str(path))  # validates every share
    corpus = doc.get("corpus")
    root = resolve_corpus(corpus if corpus else None)
    lr = doc.get("centralized_lr") or 0.0
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
        raise StepError(f"{path}: centralized_lr {lr!r} must be a positive learning rate")
    privacy = doc.get("privacy")
    if privacy is not None and not isinstance(privacy, dict):
        raise StepError(f"{path}: privacy must be a mapping with epsilon and delta, or null")
    cfg = SimConfig(
        path,
        root.resolve(),
        federation,
        institutions,
        str(doc.get("description", "")),
        float(lr),
        privacy,
    )
    for i in range(len(institutions)):  # names and corpus, as each node will read them
        sim_node_settings(cfg.to_yaml_dict(), i, Path("."), str(path))
    return cfg
