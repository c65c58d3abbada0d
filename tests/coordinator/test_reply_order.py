"""Replies arrive in any order; the aggregate (and so a resumed run) is the same bit for bit.

The round loop folds each update into a running sum as it arrives (coordinator/in_order.py,
coordinator/strategy/fold.py). Float sums depend on their order, so these tests use updates
whose fp32 sums do differ by order (checked first) and deliver them sorted, reversed and
shuffled.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.config import FederationConfig
from coordinator.in_order import InOrder
from coordinator.rounds import RoundRunner
from step_fed import protocol as P
from step_fed.transport import RawReply, Weights
from step_fed.update_codec import decode, encode

NODES = 5


class ShuffledNodes:
    """``NODES`` nodes answering every train message with an int8 update that depends only on
    (node, round): node i's values are ~10**-i, so that fp32 sums depend on their order. The
    replies come in the order ``order(round)`` gives (a permutation of the node ids)."""

    def __init__(self, order: str, names_known: bool = True, bad: int | None = None) -> None:
        self.order, self.names_known, self.bad = order, names_known, bad
        self.resent: list[str] = []
        self.shapes: dict[str, torch.Size] = {}

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        return list(range(1, NODES + 1))

    def name_of(self, node_id: int) -> str | None:
        return f"inst-{node_id}" if self.names_known else None

    def send(
        self,
        kind: str,
        node_ids: list[int],
        weights: Weights,
        config: dict[str, Any],
        extra: Any = None,
    ) -> Iterator[RawReply]:
        round_ = int(config[P.CFG_ROUND])
        for n in arrival(node_ids, self.order, round_):
            yield RawReply(n, f"inst-{n}", *update(n, round_, self.shapes, config, n == self.bad))


def arrival(node_ids: list[int], order: str, round_: int) -> list[int]:
    if order == "sorted":
        return sorted(node_ids)
    if order == "reversed":
        return sorted(node_ids, reverse=True)
    ids = list(node_ids)
    random.Random(f"{order}/{round_}").shuffle(ids)
    return ids


def update(
    node: int, round_: int, shapes: dict[str, torch.Size], config: dict[str, Any], bad: bool
) -> tuple[dict[str, float], Weights]:
    gen = torch.Generator().manual_seed(1000 * round_ + node)
    values = {k: torch.randn(shapes[k], generator=gen) * 10.0**-node for k in sorted(shapes)}
    if bad:
        values[next(iter(values))].view(-1)[0] = float("nan")
    tokens = int(config[P.CFG_BATCH_SIZE]) * int(config[P.CFG_SEQ_LEN]) - node  # unequal weights
    metrics = {P.M_ROUND: float(round_), P.M_NUM_TOKENS: float(tokens), P.M_TRAIN_LOSS: 3.0}
    return metrics, encode(values, "int8")


def runner(
    tmp: Path, transport: ShuffledNodes, resume: bool = False, **federation: Any
) -> RoundRunner:
    cfg = FederationConfig.model_validate(
        {"preset": "debug", "rounds": 3, "inner_steps": 1, "batch_size": 2, "seq_len": 16,
         "update_encoding": "int8", "token_rows": False, "min_nodes": NODES - 1, **federation}
    )  # fmt: skip
    r = RoundRunner(cfg, tmp, transport, resume=resume)
    transport.shapes = r.shapes
    return r


def test_the_updates_sum_differently_in_another_order(tmp_path: Path) -> None:
    """The premise: these updates' fp32 sums depend on the order they are added in."""
    shapes = runner(tmp_path, ShuffledNodes("sorted")).shapes
    config = {P.CFG_BATCH_SIZE: 2, P.CFG_SEQ_LEN: 16}
    updates = [decode(update(n, 1, shapes, config, False)[1], "int8", shapes) for n in (1, 2, 3)]
    a = {k: updates[0][k] + updates[1][k] + updates[2][k] for k in shapes}
    b = {k: updates[2][k] + updates[1][k] + updates[0][k] for k in shapes}
    assert any(not torch.equal(a[k], b[k]) for k in shapes)


@pytest.mark.parametrize("names_known", [True, False])
def test_any_arrival_order_gives_the_same_weights_bit_for_bit(
    tmp_path: Path, names_known: bool
) -> None:
    results = {}
    for order in ("sorted", "reversed", "shuffle-a", "shuffle-b"):
        r = runner(tmp_path / order, ShuffledNodes(order, names_known))
        r.run()
        results[order] = r.weights
    base = results["sorted"]
    for order, weights in results.items():
        for k in base:
            assert torch.equal(weights[k], base[k]), (order, k)


def test_a_run_resumed_under_another_order_reproduces_the_uninterrupted_one(
    tmp_path: Path,
) -> None:
    straight = runner(tmp_path / "straight", ShuffledNodes("shuffle-a"))
    straight.run()
    part = runner(tmp_path / "resumed", ShuffledNodes("shuffle-b"))
    for r in (1, 2):
        part.train_round(r)
        part.round = r
        part._save()
    resumed = runner(tmp_path / "resumed", ShuffledNodes("reversed"), resume=True)
    resumed.run()
    for k, v in straight.weights.items():
        assert torch.equal(v, resumed.weights[k]), k


def test_updates_in_order_are_folded_at_once_and_overtaking_ones_wait(tmp_path: Path) -> None:
    """Streaming, not collecting: with names known, an update in its turn is folded when it
    arrives; in reverse order every update but the last waits for the first one."""
    in_order = runner(tmp_path / "in", ShuffledNodes("sorted"))
    in_order.train_round(1)
    assert in_order.most_waiting == 0
    reverse = runner(tmp_path / "rev", ShuffledNodes("reversed"))
    reverse.train_round(1)
    assert reverse.most_waiting == NODES - 1
    unknown = runner(tmp_path / "unknown", ShuffledNodes("sorted", names_known=False))
    unknown.train_round(1)
    assert unknown.most_waiting == NODES  # names only from the replies: all wait for the end


def test_a_rejected_update_takes_its_turn_without_holding_up_the_others(tmp_path: Path) -> None:
    r = runner(tmp_path / "bad", ShuffledNodes("sorted", bad=2))
    record = r.train_round(1)
    assert list(record["rejected"]) == ["inst-2"] and record["nodes"] == NODES - 1
    assert r.most_waiting == 0
    phases = record["phase_s"]  # where the round's time went
    assert set(phases) == {"encode", "wait", "check", "aggregate", "step"}
    assert all(v >= 0 for v in phases.values()) and phases["check"] > 0


def test_in_order_hands_items_on_when_their_turn_comes() -> None:
    turns: InOrder[str] = InOrder([3, 1, 2], key=str)
    assert turns.put(1, "b") == []
    assert turns.put(3, "a") == ["a", "b"]
    assert turns.put(2, None) == []  # rejected: its turn passes
    late: InOrder[str] = InOrder([3, 1, 2], key=str)
    late.put(2, "c")
    late.put(1, "b")
    assert late.rest() == ["b", "c"]  # node 3 never answered
    unknown: InOrder[str] = InOrder(None, key=str)
    assert unknown.put(2, "z") == [] and unknown.put(1, "y") == []
    assert unknown.rest() == ["y", "z"]


@pytest.mark.parametrize("rule", ["mean", "filtered_mean"])
def test_updates_beyond_the_memory_budget_wait_on_disk_with_the_same_bits(
    tmp_path: Path, rule: str
) -> None:
    """update_memory_mib 0: every update that waits (reverse order; a robust rule: all) goes
    to the run folder and is read back tensor by tensor; the weights are those of a run that
    held them in memory, and nothing is left on disk after the round."""
    held = runner(tmp_path / "held", ShuffledNodes("reversed"), aggregation=rule)
    held.train_round(1)
    assert held.spilled == 0
    disk = runner(tmp_path / "disk", ShuffledNodes("reversed"), aggregation=rule,
                  update_memory_mib=0)  # fmt: skip
    disk.train_round(1)
    assert disk.spilled == (NODES - 1 if rule == "mean" else NODES)
    assert not (tmp_path / "disk" / ".updates").exists()
    for k, v in held.weights.items():
        assert torch.equal(v, disk.weights[k]), k
