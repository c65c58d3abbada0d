"""A deployed coordinator takes a DP node's epsilon only as its enrolled key signed it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from coordinator.privacy_reports import SignedReports
from coordinator.registry import Registry
from coordinator.replies import TrainReply
from node.keys import PRIVATE_KEY, create_key_pair
from step_fed.identity import NodeSigner


def _reply(
    signer: NodeSigner, epsilon: float, signed_epsilon: float, round_: int = 4
) -> TrainReply:
    report = json.dumps({"node": "uni", "run_id": 9, "round": round_, "epsilon": signed_epsilon,
                         "delta": 1e-6}, sort_keys=True, separators=(",", ":"))  # fmt: skip
    return TrainReply(1, "uni", 10, float("nan"), {}, {"w": torch.zeros(1)}, 4, 0.0, 0.0,
                      None, epsilon, report, signer.sign(report.encode()))  # fmt: skip


def test_only_the_enrolled_keys_signature_of_the_same_numbers_counts(tmp_path: Path) -> None:
    line = create_key_pair(tmp_path, "uni")
    (tmp_path / "other").mkdir()
    create_key_pair(tmp_path / "other", "x")
    Registry(tmp_path).enroll("uni", line.rsplit(" ", 1)[0])
    reports = SignedReports(tmp_path)
    own, other = NodeSigner(tmp_path / PRIVATE_KEY), NodeSigner(tmp_path / "other" / PRIVATE_KEY)
    assert reports.check(_reply(own, 1.5, 1.5), 4) is None
    assert "signature of its enrolled key" in str(reports.check(_reply(other, 1.5, 1.5), 4))
    assert "not the one it sent" in str(reports.check(_reply(own, 0.5, 1.5), 4))  # edited number
    assert "not the one it sent" in str(reports.check(_reply(own, 1.5, 1.5, round_=3), 4))
    unsigned = _reply(own, 1.5, 1.5)
    unsigned.epsilon_signature = ""
    assert "not signed" in str(reports.check(unsigned, 4))


def test_accept_reset_is_kept_in_the_registry(tmp_path: Path) -> None:
    line = create_key_pair(tmp_path, "uni")
    registry = Registry(tmp_path)
    registry.enroll("uni", line.rsplit(" ", 1)[0])
    assert SignedReports(tmp_path).reset_accepted("uni") == ""
    registry.accept_reset("uni")
    assert SignedReports(tmp_path).reset_accepted("uni").startswith("20")
