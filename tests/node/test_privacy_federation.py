"""Local DP inside a running federation (in-process transport, the real ClientApp): the budget
is enforced round by round, refusals reach the coordinator, what a DP node reports does not
depend on which sequences it drew, and a damaged ledger stops the node without touching it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import yaml

from coordinator.config import load_federation_config
from coordinator.rounds import RoundRunner
from node.ledger import PrivacyLedger
from step_fed import protocol as P
from tests.local_federation import LocalTransport, write_sim_config

PRIVACY = {"epsilon": 3.0, "delta": 1e-6, "rounds": 2, "mode": "hooks"}


def sim(tmp_path: Path, corpus: Path, privacy: dict[str, Any] | None, **fed: Any) -> Path:
    insts = [
        {"name": "a", "languages": {"el": 1.0}},
        {"name": "b", "languages": {"et": 1.0}, "privacy": None},  # opts out
    ]
    path = write_sim_config(tmp_path / "s.yaml", corpus, insts, **fed)
    doc = yaml.safe_load(path.read_text())
    doc["privacy"] = privacy
    path.write_text(yaml.safe_dump(doc))
    return path


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_dp_node_spends_its_budget_then_refuses(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg_file = sim(tmp_path, tiny_corpus, PRIVACY, rounds=3)
    run = tmp_path / "r"
    runner = RoundRunner(load_federation_config(cfg_file), run, LocalTransport(cfg_file, run, 2))
    summary = runner.run()
    rounds = [h for h in runner.history if h["kind"] == "round"]
    assert [r["nodes"] for r in rounds] == [2, 2, 1]  # a trained its 2 planned rounds, then no
    reason = rounds[2]["rejected"]["a"]
    assert f"node error {P.ERR_PRIVACY_BUDGET}" in reason and "2 rounds it planned" in reason
    ledger = PrivacyLedger.load(run / "nodes" / "a", "a")
    assert [e.round for e in ledger.entries] == [1, 2] and ledger.refusals[0]["round"] == 3
    assert 0.99 * 3.0 <= summary["epsilon"]["a"] <= 3.0
    assert "b" not in summary["epsilon"]  # b trains without local DP
    assert rounds[0]["epsilon"]["a"] < rounds[1]["epsilon"]["a"]
    assert "one training sequence of 32 tokens" in ledger.unit


def test_a_dp_reply_reveals_nothing_about_the_drawn_batches(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    cfg_file = sim(tmp_path, tiny_corpus, PRIVACY, rounds=1)
    run = tmp_path / "r"
    transport = LocalTransport(cfg_file, run, 2)
    runner = RoundRunner(load_federation_config(cfg_file), run, transport)
    config = runner.round_config(1).to_wire()
    raws = list(transport.send("train", [100, 101], runner.weights, config))
    dp, plain = raws
    assert dp.error is None and plain.error is None
    assert P.TOKEN_COUNTS not in dp.arrays and P.TOKEN_COUNTS in plain.arrays
    assert P.M_TRAIN_LOSS not in dp.metrics and P.M_TRAIN_LOSS in plain.metrics
    assert P.M_WALL_S not in dp.metrics and P.M_WALL_S in plain.metrics  # time grows with draws
    assert 0 < dp.metrics[P.M_EPSILON] <= 3.0 and dp.metrics[P.M_DELTA] == 1e-6
    assert P.M_EPSILON not in plain.metrics
    # tokens are the expected count (steps x q x sequences x T), the same on a second draw
    again = next(iter(transport.send("train", [100], runner.weights, {**config, P.CFG_ROUND: 2})))
    assert again.metrics[P.M_NUM_TOKENS] == dp.metrics[P.M_NUM_TOKENS]


def test_a_damaged_ledger_stops_the_node_and_is_left_alone(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    cfg_file = sim(tmp_path, tiny_corpus, {**PRIVACY, "rounds": 5}, rounds=1)
    run = tmp_path / "r"
    transport = LocalTransport(cfg_file, run, 2)
    RoundRunner(load_federation_config(cfg_file), run, transport).run()
    ledger = run / "nodes" / "a" / "privacy" / "ledger.json"
    ledger.write_text(ledger.read_text().replace('"steps": 3', '"steps": 1'))
    before = tree(run / "nodes" / "a")
    runner = RoundRunner(load_federation_config(cfg_file), run, transport, resume=True)
    raws = list(transport.send("train", [100], runner.weights, runner.round_config(2).to_wire()))
    assert raws[0].error is not None and "SHA-256 mismatch" in raws[0].error
    assert tree(run / "nodes" / "a") == before  # nothing trained, nothing overwritten


def test_a_budget_one_round_cannot_meet_trains_nothing(tiny_corpus: Path, tmp_path: Path) -> None:
    tiny = {"epsilon": 0.01, "delta": 1e-6, "noise_multiplier": 0.7}
    cfg_file = sim(tmp_path, tiny_corpus, tiny, rounds=1)
    run = tmp_path / "r"
    transport = LocalTransport(cfg_file, run, 2)
    runner = RoundRunner(load_federation_config(cfg_file), run, transport)
    raws = list(transport.send("train", [100], runner.weights, runner.round_config(1).to_wire()))
    assert raws[0].error is not None and "cannot be met by even one round" in raws[0].error
    assert not (run / "nodes" / "a" / "rounds").exists()
    assert not (run / "nodes" / "a" / "privacy").exists()


def _two_rounds(tmp_path: Path, corpus: Path) -> tuple[RoundRunner, Path]:
    budget = {**PRIVACY, "epsilon": 8.0, "rounds": 4}
    cfg_file = sim(tmp_path, corpus, budget, rounds=3)
    run = tmp_path / "r"
    runner = RoundRunner(load_federation_config(cfg_file), run, LocalTransport(cfg_file, run, 2))
    for r in (1, 2):
        runner.history.append(runner.train_round(r))
        runner.round = r
    return runner, run / "nodes" / "a"


def test_a_deleted_ledger_stops_the_node(tiny_corpus: Path, tmp_path: Path) -> None:
    """The operator deletes the ledger after round 2: the node refuses to train until its
    operator runs `step-node privacy reset`, which is recorded in the new ledger."""
    runner, state = _two_rounds(tmp_path, tiny_corpus)
    shutil.rmtree(state / "privacy")  # the marker beside it stays
    third = runner.train_round(3)
    assert "privacy ledger" in third["rejected"]["a"] and "is missing" in third["rejected"]["a"]
    ledger = PrivacyLedger.reset(state, "a")
    assert ledger.resets and "starts again from zero" in ledger.resets[0]["meaning"]
    assert PrivacyLedger.load(state, "a").resets == ledger.resets  # sealed with the ledger


def test_a_reset_budget_is_caught_by_the_coordinator(tiny_corpus: Path, tmp_path: Path) -> None:
    """Ledger and marker both gone after round 2: at round 3 the node reports the spend of one
    round, less than before; the coordinator refuses that update."""
    runner, state = _two_rounds(tmp_path, tiny_corpus)
    shutil.rmtree(state / "privacy")
    (state / ".privacy-ledger").unlink()
    third = runner.train_round(3)
    assert "a" in third["rejected"] and "reset or edited" in third["rejected"]["a"]
    assert third["nodes"] == 1  # b (no local DP) still counts


class _AcceptedReset:
    """A deployment's report policy after `step-coord accept-reset a`."""

    def check(self, reply: object, round_: int) -> str | None:
        return None

    def reset_accepted(self, node: str) -> str:
        return "2026-12-02T10:00:00Z" if node == "a" else ""


def test_an_accepted_reset_lets_one_lower_report_through(tiny_corpus: Path, tmp_path: Path) -> None:
    runner, state = _two_rounds(tmp_path, tiny_corpus)
    shutil.rmtree(state / "privacy")
    (state / ".privacy-ledger").unlink()
    runner.reports = _AcceptedReset()
    third = runner.train_round(3)
    assert third["nodes"] == 2 and third["privacy_reset_accepted"] == {"a": "2026-12-02T10:00:00Z"}
    runner.history.append(third)
    shutil.rmtree(state / "privacy")  # reset again: that acceptance was used up
    (state / ".privacy-ledger").unlink()
    again = runner.train_round(3)
    assert "reset or edited" in again["rejected"]["a"] and "accept-reset" in again["rejected"]["a"]
