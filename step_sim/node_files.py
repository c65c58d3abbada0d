"""One node.yaml per virtual institution: the simulation gives its nodes what a real institution
gives its own (node/node_config.py), so the ClientApp reads node configs only.

Flower's simulation engine tells a virtual node nothing but its ``partition-id``; the node of
partition ``i`` reads ``<run>/node-files/<i>.yaml`` (``node.client_app.sim_node_file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from node.node_config import NodeYaml, node_settings_of
from node.settings import LanguageSlice, NodeSettings
from step_common.fileio import atomic_write_text
from step_sim.config import SimConfig, institution_slices
from step_sim.identities import federation_public, key_file, write_identities

NODE_FILES = "node-files"
HEADER = "# Written by step-sim for one virtual institution (node/node_config.py). Do not edit.\n"


def write_node_files(sim: SimConfig, run_dir: Path) -> Path:
    """Write every institution's node.yaml into ``run_dir/node-files``; return that folder."""
    folder = run_dir / NODE_FILES
    folder.mkdir(parents=True, exist_ok=True)
    if sim.federation.secure_aggregation:
        write_identities(run_dir, sim.names)
    for i, doc in enumerate(node_docs(sim, run_dir)):
        NodeYaml.model_validate(doc)  # what the node will read must load
        text = HEADER + yaml.safe_dump(doc, sort_keys=False)
        atomic_write_text(folder / f"{i}.yaml", text)
    return folder


def node_settings(sim: SimConfig, run_dir: Path) -> list[NodeSettings]:
    """What each institution's node will read (the centralized twin reads the same text)."""
    return [
        node_settings_of(NodeYaml.model_validate(doc), run_dir / NODE_FILES, None)
        for doc in node_docs(sim, run_dir)
    ]


def node_docs(sim: SimConfig, run_dir: Path) -> list[dict[str, Any]]:
    """The node.yaml mapping of each institution, in partition order."""
    slices = institution_slices(sim.institutions)
    docs = []
    for inst, parts in zip(sim.institutions, slices, strict=True):
        privacy = sim.privacy_of(inst)
        doc = {
            "name": inst.name,
            "data": str(sim.corpus),
            "language_parts": {lang: _part(s) for lang, s in parts.items()},
            "state_dir": str((run_dir / "nodes" / inst.name).resolve()),
            "privacy": privacy.model_dump() if privacy else None,
            "resources": {"device": "cpu", "gpus": inst.gpus},
        }
        if sim.federation.secure_aggregation:  # step_sim/identities.py
            doc["key"] = str(key_file(run_dir, inst.name).resolve())
            doc["federation_key"] = str(federation_public(run_dir).resolve())
        docs.append(doc)
    return docs


def _part(s: LanguageSlice) -> dict[str, list[float]]:
    return {"train": list(s.train), "valid": list(s.valid)}
