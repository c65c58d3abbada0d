"""The roster: every enrolled node's identity key, signed with the federation key.

A node checks its neighbours' round keys against their identity keys (``keys.py``); it must
get those identity keys from somewhere the coordinator's relay cannot alter. The roster is
that source: the enrolled names and keys with a version that only grows, signed with the
federation's Ed25519 key, which every node already holds as ``federation.pub`` and checks the
app and checkpoints with. A relayed roster that does not verify, or that is older than one the
node has seen, is refused.

What it does not cover: whoever holds the federation's private key can sign any roster. Kept on
the coordinator's host (as `step-coord init` leaves it), a compromise of that host can replace
an identity key; kept offline, only the admin who signs roster changes can.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from step_common.signatures import sign, verify
from step_fed.secagg.setup import SecAggError


def roster_bytes(version: int, nodes: Mapping[str, str]) -> bytes:
    body = {
        "kind": "step-secagg-roster-v1",
        "version": version,
        "nodes": dict(sorted(nodes.items())),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signed_roster(
    key: ed25519.Ed25519PrivateKey, version: int, nodes: Mapping[str, str]
) -> dict[str, Any]:
    """``nodes`` (name -> identity public-key line) at ``version``, with the signature."""
    return {
        "version": version,
        "nodes": dict(nodes),
        "signature": sign(key, roster_bytes(version, nodes)),
    }


def verified_roster(
    doc: Mapping[str, Any], federation: ed25519.Ed25519PublicKey, seen_version: int = 0
) -> dict[str, str]:
    """The identity keys of a roster signed by ``federation``; SecAggError if the signature
    does not verify or the roster is older than ``seen_version`` (a rollback)."""
    try:
        version, nodes, signature = int(doc["version"]), dict(doc["nodes"]), str(doc["signature"])
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in nodes.items()):
            raise TypeError("names and keys must be texts")
    except (KeyError, TypeError, ValueError) as exc:
        raise SecAggError(f"the roster of identity keys is malformed ({exc})") from None
    if not verify(federation, roster_bytes(version, nodes), signature):
        raise SecAggError(
            "the roster of identity keys is not signed by the federation key this node holds "
            "(federation.pub): the coordinator, or someone between, altered it; this node "
            "takes no part in secure aggregation with it"
        )
    if version < seen_version:
        raise SecAggError(f"the roster is version {version}, older than version {seen_version} "
                          "this node has seen: a replayed roster is refused")  # fmt: skip
    return nodes


ROSTER = "roster.json"
"""The signed roster's file: in a deployment's federation folder (step-coord enroll and revoke
write it), in a simulation's run folder (step-sim writes it)."""
