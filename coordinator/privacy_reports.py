"""What a deployed coordinator requires of a DP node's epsilon report, and the resets it accepts.

A node with local DP reports its total spend each round; the coordinator refuses an update whose
spend went down (rounds.py: its ledger was reset or edited). In a deployment the report must
also carry the signature of the node's enrolled key over its exact bytes (canonical JSON: node,
run id, round, epsilon, delta), and the round records keep report and signature: evidence of
what each institution claimed, which it cannot later deny and nobody else could have made.

After an operator has had to reset a node's ledger (``step-node privacy reset``) its spend starts
again from zero, and the coordinator refuses it until the admin accepts that reset
(``step-coord accept-reset NODE``: recorded in the registry and the audit log). The acceptance
lets one lower report through; from then on the new spend must grow again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from coordinator.registry import Registry
from coordinator.replies import TrainReply
from step_fed.identity import verify_node_signature


class ReportPolicy(Protocol):
    def check(self, reply: TrainReply, round_: int) -> str | None:
        """Why the reply's epsilon report is not acceptable (None: it is)."""
        ...

    def reset_accepted(self, node: str) -> str:
        """The admin's acceptance of the node's latest ledger reset ('' when none)."""
        ...


class SignedReports:
    """The deployed policy: reports signed by the enrolled key; resets the admin accepted."""

    def __init__(self, fed_root: Path) -> None:
        self.fed_root = fed_root

    def check(self, reply: TrainReply, round_: int) -> str | None:
        if reply.epsilon is None:
            return None
        if not reply.epsilon_report or not reply.epsilon_signature:
            return (
                "its epsilon report is not signed by its key (a node older than this "
                "coordinator): the node's operator must update step-node"
            )
        registry = Registry(self.fed_root)
        entry = registry.nodes.get(reply.node)
        if entry is None or not verify_node_signature(
            entry.public_key, reply.epsilon_report.encode("utf-8"), reply.epsilon_signature
        ):
            return "its epsilon report does not carry the signature of its enrolled key"
        try:
            report = json.loads(reply.epsilon_report)
            claimed = (int(report["round"]), float(report["epsilon"]))
        except (ValueError, KeyError, TypeError):
            return "its signed epsilon report cannot be read"
        if claimed != (round_, reply.epsilon):
            return (
                f"its signed epsilon report (round {claimed[0]}, epsilon {claimed[1]:.4f}) is "
                f"not the one it sent with this reply (round {round_}, epsilon "
                f"{reply.epsilon:.4f})"
            )
        return None

    def reset_accepted(self, node: str) -> str:
        entry = Registry(self.fed_root).nodes.get(node)
        return (entry.privacy_reset_accepted or "") if entry is not None else ""
