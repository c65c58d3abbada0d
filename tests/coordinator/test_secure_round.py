"""Secure aggregation through the round loop and the nodes' ClientApp (in process, real Flower
messages): the secure mean is the plain token-weighted mean up to the grid's rounding, nodes
that drop at any stage leave the sum of the others, a swapped key stops the round safely, stale
and replayed stages are refused, and a coordinator restarted mid-round starts it afresh."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict

from coordinator.config import load_federation_config
from coordinator.rounds import RoundRunner
from coordinator.secure_round import SecureRounds, _Attempt
from node import secure_client
from step_common.errors import StepError
from step_fed import protocol as P
from step_fed.secagg.keys import RoundKeys
from step_fed.secagg.server import SecAggServer
from step_fed.secagg.stages import ROUND_ID, KeysRequest
from step_fed.secagg.wire import advert_of, advert_record
from tests.local_federation import LocalTransport, write_sim_config

INSTITUTIONS = [
    {"name": "hellas", "languages": {"el": 0.6, "de": 0.3}},
    {"name": "baltic", "languages": {"et": 0.6, "de": 0.3}},
    {"name": "alpine", "languages": {"de": 0.4}},
    {"name": "iberia", "languages": {"el": 0.4, "et": 0.4}},
]
RANGE = 0.05
SECURE = dict(secure_aggregation=True, secure_clip=100.0, secure_range=RANGE, secure_bits=10,
              min_nodes=2, update_encoding="fp32")  # fmt: skip


def runner(tmp: Path, corpus: Path, name: str, **fed: Any) -> tuple[RoundRunner, LocalTransport]:
    cfg_file = write_sim_config(tmp / f"{name}.yaml", corpus, INSTITUTIONS, rounds=1, **fed)
    run_dir = tmp / name
    transport = LocalTransport(cfg_file, run_dir, len(INSTITUTIONS))
    return RoundRunner(load_federation_config(cfg_file), run_dir, transport), transport


def spy_step(run: RoundRunner) -> list[dict[str, torch.Tensor]]:
    """The mean update of each round, as the outer optimizer receives it."""
    seen: list[dict[str, torch.Tensor]] = []
    step = run.strategy.step

    def record(weights: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> Any:
        seen.append({k: v.clone() for k, v in delta.items()})
        return step(weights, delta)

    run.strategy.step = record  # type: ignore[method-assign]
    return seen


def test_the_secure_mean_is_the_plain_mean_up_to_the_grid(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    # token rows are averaged by presence under secure aggregation, by count in the plain mean
    # (step_fed/secagg/vector.py): compared without them, every tensor is within a step
    plain, _ = runner(tmp_path, tiny_corpus, "plain", min_nodes=2, token_rows=False)
    secure, _ = runner(tmp_path, tiny_corpus, "secure", token_rows=False, **SECURE)
    want, got = spy_step(plain), spy_step(secure)
    plain.train_round(1)
    record = secure.train_round(1)
    assert record["secure"]["survivors"] == 4 and record["secure"]["attempts"] == 1
    assert record["tokens"] == 4 * 3 * 2 * 32 and record["loss"] is None
    assert "update_norm" not in record  # the coordinator never sees a node's update
    assert secure.secure is not None
    step = secure.secure.grid.step
    for name, value in want[0].items():  # every node trained W tokens: within a step
        err = float((got[0][name] - value).abs().max())
        assert err <= step, (name, err, step)
    moved = max(float(v.abs().max()) for v in want[0].values())
    assert moved > 50 * step  # the comparison is not of two near-zero updates


@pytest.mark.parametrize("stage", ["secagg_shares", "secagg_input", "secagg_reveal"])
def test_a_node_that_drops_at_any_stage_leaves_the_sum_of_the_others(
    tiny_corpus: Path, tmp_path: Path, stage: str
) -> None:
    run, transport = runner(tmp_path, tiny_corpus, "drop", **SECURE)
    transport.drop_at.add((stage, 101))  # baltic
    means = spy_step(run)
    record = run.train_round(1)
    # the survivors' mean: every value on the grid's range (a mask left in would be anywhere)
    assert max(float(v.abs().max()) for v in means[0].values()) <= RANGE
    survivors = 3 if stage != "secagg_reveal" else 4  # a reveal missing: others' shares do
    assert record["secure"]["survivors"] == survivors
    if stage == "secagg_input":
        assert record["secure"]["dropped"] == ["baltic"]


def test_too_many_drops_abandon_the_round_and_retry_with_fresh_masks(
    tiny_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run, transport = runner(tmp_path, tiny_corpus, "few", **{**SECURE, "secure_min_survivors": 4})
    transport.drop_at.add(("secagg_input", 102))  # 3 inputs < 4: abandoned
    original = transport.send
    calls: list[str] = []

    def heal_after_first(kind: Any, ids: Any, *rest: Any) -> Any:
        calls.append(kind)
        if kind == "secagg_keys" and calls.count("secagg_keys") == 2:
            transport.drop_at.clear()  # alpine is back for the second attempt
        return original(kind, ids, *rest)

    transport.send = heal_after_first  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        record = run.train_round(1)
    assert record["secure"]["attempts"] == 2 and record["secure"]["survivors"] == 4
    # the abandoned attempt's masked inputs count too: 3 + 4 of 2 bytes per parameter (b = 12)
    assert 7 * 2 * run.params < record["bytes_up"] < 7 * 2 * run.params + 100_000
    assert "fewer than min_survivors 4: abandoned" in caplog.text
    assert "secagg_reveal" not in calls[: calls.index("secagg_keys", 1)]  # nothing unmasked


def test_a_swapped_key_is_caught_by_the_nodes_and_the_round_fails_safely(
    tiny_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run, transport = runner(tmp_path, tiny_corpus, "swap", **SECURE)

    def swap(kind: str, node: int, reply: Message) -> Message:
        """A coordinator that relays its own key as hellas' (to read hellas' shares)."""
        if kind == "secagg_keys" and node == 100:
            record = reply.content[P.SECAGG]
            advert = advert_of(dict(record.items()), "test")
            forged = RoundKeys().advert(advert.round_id, advert.node, _NoKey())
            fields = advert_record(forged)
            fields["signature"] = advert.signature  # hellas' signature over its own keys
            reply.content[P.SECAGG] = ConfigRecord(dict(fields))
        return reply

    transport.tamper = swap
    with caplog.at_level(logging.WARNING), pytest.raises(StepError, match="abandoned 3 times"):
        run.train_round(1)
    assert "not signed by hellas's enrolled key" in caplog.text
    for node in (101, 102, 103):  # the nodes that caught it left the round: secrets deleted
        assert secure_client.SESSION not in transport.contexts[node].state
    assert not list((tmp_path / "swap").glob("round-*"))  # nothing committed


class _NoKey:
    def sign(self, data: bytes) -> str:
        return ""


def _message(kind: str, config: dict[str, Any], record: dict[str, Any]) -> Message:
    content = RecordDict({P.CONFIG: ConfigRecord(config), P.SECAGG: ConfigRecord(record)})
    return Message(content, dst_node_id=100, message_type=f"train.{kind}")


def test_stale_replayed_and_repeated_stages_are_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    run, transport = runner(tmp_path, tiny_corpus, "replay", **SECURE)
    run.train_round(1)
    context: Context = transport.contexts[100]
    roster = (tmp_path / "replay" / "roster.json").read_text()
    # keys for a round older than the one hellas took part in
    old = KeysRequest(0, "r0-old", roster).to_wire()
    reply = secure_client.keys(_message("secagg_keys", old, {}), context)
    assert reply.has_error() and "older than round 1" in reply.error.reason
    # a stage of a round id this node does not hold (round 1's, finished)
    for kind in ("secagg_shares", "secagg_input", "secagg_reveal"):
        handler = secure_client.STAGES[kind]
        reply = handler(_message(kind, {}, {ROUND_ID: "r1-finished"}), context)
        assert reply.has_error(), kind
    # a new round's keys, then the same keys stage twice is fine (fresh keys), but its shares
    # stage twice is not
    fresh = KeysRequest(2, "r2-a", roster).to_wire()
    first = secure_client.keys(_message("secagg_keys", fresh, {}), context)
    again = secure_client.keys(_message("secagg_keys", fresh, {}), context)
    assert not first.has_error() and not again.has_error()
    assert dict(first.content[P.SECAGG].items()) != dict(again.content[P.SECAGG].items())
    # a roster altered by the coordinator
    doc = json.loads(roster)
    doc["nodes"]["hellas"] = doc["nodes"]["baltic"]
    forged = KeysRequest(2, "r2-b", json.dumps(doc)).to_wire()
    reply = secure_client.keys(_message("secagg_keys", forged, {}), context)
    assert reply.has_error() and "not signed by the federation key" in reply.error.reason


def test_a_coordinator_restarted_mid_round_starts_it_over_with_new_masks(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    run, transport = runner(tmp_path, tiny_corpus, "crash", **SECURE)
    adverts: list[dict[str, Any]] = []

    def keep(kind: str, node: int, reply: Message) -> Message:
        if kind == "secagg_keys" and node == 100:
            adverts.append(dict(reply.content[P.SECAGG].items()))
        return reply

    transport.tamper = keep
    assert run.secure is not None
    crashed = first_two_stages(run.secure, run.round_config(1))  # then the coordinator died
    # a new coordinator process on the same run folder; the nodes still hold the old round
    restarted = RoundRunner(run.cfg, run.run_dir, transport)
    record = restarted.train_round(1)
    assert record["secure"]["survivors"] == 4 and record["secure"]["round_id"] != crashed
    assert adverts[0]["round_id"] != adverts[1]["round_id"]
    assert adverts[0]["mask_key"] != adverts[1]["mask_key"]  # fresh keys: fresh masks
    # the crashed attempt's train message is refused now (its round id is gone)
    stale = _message("secagg_input", {P.CFG_ROUND: 1}, {ROUND_ID: crashed})
    reply = secure_client.masked_input(stale, transport.contexts[100])
    assert reply.has_error() and "no secure round" in reply.error.reason


def first_two_stages(secure: SecureRounds, config: P.RoundConfig) -> str:
    """An attempt's keys and shares stages only; its round id."""
    at = _Attempt("r1-crashed")
    adverts = secure._keys(at, config.round, secure.broadcaster.nodes())
    setup = secure._setup(at.round_id, sorted(adverts), secure.layout(config).length)
    secure._shares(at, setup, config, SecAggServer(setup).route_adverts(adverts))
    return at.round_id


def test_central_dp_adds_its_noise_once_to_the_unmasked_sum(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """Every node weighs 1 and clips to central_dp_clip; the coordinator adds N(0, (sigma C')^2)
    to the sum (C': the clip plus rounding's most) and divides by the node count."""
    run, _ = runner(tmp_path, tiny_corpus, "central", central_dp_noise=1.0, central_dp_clip=0.5,
                    token_rows=False, **{**SECURE, "secure_bits": 8})  # fmt: skip
    means = spy_step(run)
    record = run.train_round(1)
    assert record["epsilon_central"] > 0 and record["secure"]["survivors"] == 4
    assert run.secure is not None
    sensitivity = run.secure.sensitivity(run.secure.layout(run.round_config(1)))
    assert 0.5 < sensitivity < 0.5 + run.secure.grid.step * run.params**0.5 * 1.0001
    values = torch.cat([v.reshape(-1) for v in means[0].values()])
    # the updates themselves are below the grid's range (0.05): the noise dominates
    assert float(values.std()) == pytest.approx(1.0 * sensitivity / 4, rel=0.02)


def test_a_node_with_local_dp_takes_part(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg_file = write_sim_config(tmp_path / "dp.yaml", tiny_corpus, INSTITUTIONS, rounds=1,
                                **SECURE)  # fmt: skip
    doc = yaml.safe_load(cfg_file.read_text())
    doc["institutions"][0]["privacy"] = {"epsilon": 8.0, "delta": 1e-6, "rounds": 2}
    cfg_file.write_text(yaml.safe_dump(doc))
    transport = LocalTransport(cfg_file, tmp_path / "dp", len(INSTITUTIONS))
    run = RoundRunner(load_federation_config(cfg_file), tmp_path / "dp", transport)
    record = run.train_round(1)
    assert record["secure"]["survivors"] == 4
    assert set(record["epsilon"]) == {"hellas"} and record["epsilon"]["hellas"] > 0
