"""The signed roster of identity keys in the federation folder (``roster.json``): what secure
aggregation's nodes check their neighbours' round keys against (step_fed/secagg/roster.py).

`step-coord enroll` and `revoke` (and `start`) publish it from the registry's active entries,
signed with the federation key; its version grows by one with every change, so a node that saw
a newer roster refuses an older one (a revoked key brought back by replaying the old file).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from coordinator.registry import Registry
from step_common.fileio import atomic_write_json
from step_fed.secagg.roster import ROSTER, signed_roster


def publish_roster(folder: Path, key: ed25519.Ed25519PrivateKey) -> Path:
    """Write ``folder/roster.json`` from the registry's active nodes, unless it lists them
    already; returns its path."""
    path = Path(folder) / ROSTER
    nodes = {e.name: e.public_key for e in Registry(folder).nodes.values() if e.active}
    version = 0
    if path.is_file():
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
            version = int(held["version"])
            if held["nodes"] == nodes:
                return path
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: write it anew, one version on from what it said (or 1)
    atomic_write_json(path, signed_roster(key, version + 1, nodes))
    return path
