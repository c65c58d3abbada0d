"""A round under secure aggregation (``federation.secure_aggregation``): the coordinator relays
what the nodes need to mask their updates and learns only the sum (README "Secure aggregation").

One attempt of a round is four message rounds over the transport (node/secure_client.py):

    secagg_keys    the signed roster              -> each node's signed advert of round keys
    secagg_shares  the setup, neighbours' adverts -> shares sealed to each neighbour
    secagg_input   weights, round config, shares  -> the node trains; its masked vector
    secagg_reveal  who is in the sum, who dropped -> shares that remove the masks

An attempt with too few live nodes at any stage is abandoned whole (nothing unmasked) and the
round is tried again with the nodes still there, under a new round id: fresh keys and masks.
A coordinator restarted mid-round starts the round over the same way (its round ids are drawn
afresh, and the nodes refuse stages of a round id they do not hold).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coordinator.broadcast import Broadcaster
from coordinator.config import FederationConfig
from coordinator.replies import Rejection, TrainReply, check_secure_reply
from coordinator.strategy import CentralDP, Strategy
from step_common.errors import StepError
from step_fed import protocol as P
from step_fed.secagg.graph import neighbours
from step_fed.secagg.grid import Grid
from step_fed.secagg.keys import Advert
from step_fed.secagg.server import SecAggServer
from step_fed.secagg.setup import RoundSetup, SecAggAbandoned, SecAggError
from step_fed.secagg.stages import (
    ROUND_ID,
    KeysRequest,
    RevealRequest,
    SharesRequest,
    Terms,
    boxes_wire,
    sent_boxes,
)
from step_fed.secagg.vector import Layout, mean_update, summed_update
from step_fed.secagg.wire import advert_of, reveal_of
from step_fed.transport import RawReply, Transport, Weights

log = logging.getLogger("step.coordinator")

ATTEMPTS = 3
"""Attempts of a round before the run stops (each abandoned one leaves no sum)."""

Check = Callable[[TrainReply], TrainReply | Rejection]
"""The round loop's checks of a reply beyond its masked input (its epsilon report)."""


@dataclass
class SecureResult:
    delta: Weights
    """The federation's mean update (central DP: with its noise)."""
    tokens: int
    """Tokens the nodes in the sum trained (from the sum itself)."""
    ok: list[TrainReply]
    """The nodes in the sum (replies without updates)."""
    rejected: list[Rejection]
    raws: list[RawReply]
    """Every train reply's metrics (an interim evaluation rides on them)."""
    bytes_up: int
    bytes_down: int
    """Every byte of the round's messages, abandoned attempts included."""
    record: dict[str, Any] = field(default_factory=dict)
    """For metrics.jsonl: attempts, who dropped, the protocol's own bytes."""


@dataclass
class _Attempt:
    round_id: str
    ids: dict[str, int] = field(default_factory=dict)
    """Node name -> node id, of the nodes that advertised keys."""
    bytes_up: int = 0
    bytes_down: int = 0
    """The stages' records' bytes (keys, shares, reveals) both ways."""
    input_up: int = 0
    input_down: int = 0
    """The train message's bytes (weights, config) and the masked inputs'."""


class SecureRounds:
    def __init__(
        self,
        cfg: FederationConfig,
        transport: Transport,
        broadcaster: Broadcaster,
        strategy: Strategy,
        roster: Path,
        shapes: dict[str, torch.Size],
    ) -> None:
        """``roster``: the signed roster of the nodes' identity keys (roster.py) sent to
        every node, which checks it with the federation key it holds."""
        self.cfg, self.transport, self.broadcaster = cfg, transport, broadcaster
        self.strategy, self.roster, self.shapes = strategy, roster, shapes
        central = isinstance(strategy, CentralDP)
        self.grid = Grid(cfg.central_dp_clip if central else cfg.secure_clip, cfg.secure_range,
                         cfg.secure_bits)  # fmt: skip
        self.equal = central  # central DP: every node weighs 1 (its clip bounds the sum)
        self.rows = (P.EMBEDDING_WEIGHT, P.OUTPUT_WEIGHT) if cfg.token_rows and not central else ()

    def layout(self, config: P.RoundConfig) -> Layout:
        return Layout(
            self.shapes, self.nominal(config), self.grid.bits, self.rows, self.cfg.secure_row_cap
        )

    @staticmethod
    def nominal(config: P.RoundConfig) -> int:
        """W: the most tokens a node can train in the round."""
        return config.inner_steps * config.batch_size * config.seq_len

    def run(self, config: P.RoundConfig, weights: Weights, check: Check) -> SecureResult:
        """The round's mean update from the sum of the nodes' masked vectors; ``check``: a
        train reply's checks (round, epsilon report) besides its masked input's."""
        last: SecAggError | None = None
        spent = _Attempt("")  # the bytes of abandoned attempts
        for attempt in range(1, ATTEMPTS + 1):
            at = _Attempt(f"r{config.round}-{secrets.token_hex(8)}")
            try:
                result = self._attempt(at, config, weights, check)
            except SecAggAbandoned as exc:
                log.warning("round %d: secure aggregation attempt %d of %d abandoned (%s): "
                            "trying again with the nodes still there", config.round, attempt,
                            ATTEMPTS, exc)  # fmt: skip
                last = exc
                for key in ("bytes_up", "bytes_down", "input_up", "input_down"):
                    setattr(spent, key, getattr(spent, key) + getattr(at, key))
                continue
            result.record["attempts"] = attempt
            result.bytes_up += spent.bytes_up + spent.input_up
            result.bytes_down += spent.bytes_down + spent.input_down
            return result
        raise StepError(
            f"round {config.round}: secure aggregation abandoned {ATTEMPTS} times, last: {last}; "
            "too few nodes stay through a round: start more nodes, or lower "
            "federation.secure_min_survivors"
        )

    def _attempt(
        self, at: _Attempt, config: P.RoundConfig, weights: Weights, check: Check
    ) -> SecureResult:
        adverts = self._keys(at, config.round, self.broadcaster.nodes())
        setup = self._setup(at.round_id, sorted(adverts), self.layout(config).length)
        server = SecAggServer(setup)
        boxes = self._shares(at, setup, config, server.route_adverts(adverts))
        routed = server.route_shares(boxes)
        ok, rejected, raws, masked = self._inputs(at, config, weights, routed, check, setup)
        survivors, dropped = server.add_masked(masked)
        total = server.unmask(self._reveal(at, survivors, dropped))
        delta, tokens = self._mean(total, len(survivors), config)
        ok = [r for r in ok if r.node in survivors]
        record = {"round_id": at.round_id, "survivors": len(survivors), "dropped": dropped,
                  "stage_bytes_up": at.bytes_up, "stage_bytes_down": at.bytes_down}  # fmt: skip
        up, down = at.bytes_up + at.input_up, at.bytes_down + at.input_down
        return SecureResult(delta, tokens, ok, rejected, raws, up, down, record)

    # --- the stages --------------------------------------------------------------------------

    def _keys(self, at: _Attempt, round_: int, ids: list[int]) -> dict[str, Advert]:
        roster = self._roster_text()
        request = KeysRequest(round_, at.round_id, roster).to_wire()
        at.bytes_down += len(ids) * _bytes_of(request)
        adverts: dict[str, Advert] = {}
        for raw in self._answers(at, "secagg_keys", ids, request, None):
            try:
                advert = advert_of(raw.secagg, raw.node)
            except SecAggError as exc:
                log.warning("round %d: %s", round_, exc)
                continue
            if advert.node != raw.node or raw.node in adverts:
                log.warning("round %d: %s advertised keys as %r: ignored", round_, raw.node,
                            advert.node)  # fmt: skip
                continue
            adverts[raw.node] = advert
            at.ids[raw.node] = raw.node_id
        return adverts

    def _setup(self, round_id: str, names: list[str], length: int) -> RoundSetup:
        """The round's graph, threshold and minimum survivors for the nodes that advertised."""
        n = len(names)
        floor = max(self.cfg.secure_min_survivors, self.cfg.min_nodes, 2)
        if n < floor:
            raise SecAggAbandoned(f"{n} nodes advertised keys, fewer than the {floor} a sum needs")
        c = self.cfg
        degree = c.secure_degree or max(4, 2 * math.ceil(math.log2(n)))
        # a node's shares are held by its neighbours and itself
        holders = min(len(v) for v in neighbours(names, degree, round_id).values()) + 1
        threshold = c.secure_threshold or holders // 2 + 1
        least = c.secure_min_survivors or max(threshold, c.min_nodes, 2)
        if threshold > holders or least > n:
            raise SecAggAbandoned(
                f"{n} nodes advertised keys: too few for secure_threshold {threshold} "
                f"({holders} holders of a node's shares) and min_survivors {least}"
            )
        return RoundSetup(round_id, tuple(names), degree, threshold, least, self.grid, length)

    def _shares(
        self,
        at: _Attempt,
        setup: RoundSetup,
        config: P.RoundConfig,
        routed: dict[str, dict[str, Advert]],
    ) -> dict[str, dict[str, bytes]]:
        terms = Terms(self.nominal(config), bool(self.rows), self.equal, self.cfg.secure_row_cap)
        extra = {at.ids[n]: SharesRequest(setup, terms, got).to_wire() for n, got in routed.items()}
        at.bytes_down += sum(_bytes_of(e) for e in extra.values())
        sent = {}
        for raw in self._answers(at, "secagg_shares", list(extra), {}, extra):
            try:
                sent[raw.node] = sent_boxes(raw.secagg, raw.node)
            except SecAggError as exc:
                log.warning("round %d: %s", config.round, exc)
        return sent

    def _inputs(
        self,
        at: _Attempt,
        config: P.RoundConfig,
        weights: Weights,
        routed: dict[str, dict[str, bytes]],
        check: Check,
        setup: RoundSetup,
    ) -> tuple[list[TrainReply], list[Rejection], list[RawReply], dict[str, np.ndarray]]:
        """The train message, with each node's shares from its neighbours; the masked inputs
        that pass the checks."""
        extra = {at.ids[n]: {ROUND_ID: at.round_id, **boxes_wire({s: {n: box}
                 for s, box in got.items()})} for n, got in routed.items()}  # fmt: skip
        at.bytes_down += sum(_bytes_of(e) for e in extra.values())
        ok, rejected, raws, masked = [], [], [], {}
        replies = self.broadcaster.send("secagg_input", config, weights, list(extra), extra)
        for raw in replies:
            raws.append(RawReply(raw.node_id, raw.node, raw.metrics, error=raw.error))
            at.input_up += sum(t.numel() * t.element_size() for t in raw.arrays.values())
            checked = check_secure_reply(raw, config.round, setup.bits, setup.length)
            del raw  # the next masked input is pulled while only this one waits
            if isinstance(checked, Rejection):
                rejected.append(checked)
                log.warning("round %d: rejected %s: %s", config.round, checked.node,
                            checked.reason)  # fmt: skip
                continue
            reply, values = checked
            again = check(reply)
            if isinstance(again, Rejection):
                rejected.append(again)
                continue
            ok.append(reply)
            masked[reply.node] = values
        at.input_down += self.broadcaster.sent
        return ok, rejected, raws, masked

    def _reveal(
        self, at: _Attempt, survivors: list[str], dropped: list[str]
    ) -> dict[str, dict[str, tuple[str, bytes]]]:
        request = RevealRequest(at.round_id, survivors, dropped).to_wire()
        ids = [at.ids[n] for n in survivors]
        at.bytes_down += len(ids) * _bytes_of(request)
        revealed = {}
        for raw in self._answers(at, "secagg_reveal", ids, {}, dict.fromkeys(ids, request)):
            try:
                revealed[raw.node] = reveal_of(raw.secagg, raw.node)
            except SecAggError as exc:
                log.warning("%s", exc)
        return revealed

    def _answers(
        self,
        at: _Attempt,
        kind: Any,
        ids: list[int],
        config: dict[str, Any],
        extra: dict[int, dict[str, Any]] | None,
    ) -> Iterable[RawReply]:
        """The replies to a stage that are answers (error replies are logged: the node left
        the round); each named by the name the transport knows, else the one it claims."""
        for raw in self.transport.send(kind, ids, {}, config, extra):
            raw.node = self.transport.name_of(raw.node_id) or raw.node or f"node {raw.node_id}"
            if raw.error is not None:
                log.warning("%s left secure round %s at %s: %s", raw.node, at.round_id, kind,
                            raw.error)  # fmt: skip
                continue
            at.bytes_up += _bytes_of(raw.secagg)
            yield raw

    def _roster_text(self) -> str:
        """The roster as the admin's tools wrote it (read each round: enrollments change)."""
        try:
            return self.roster.read_text(encoding="utf-8")
        except OSError as exc:
            raise StepError(
                f"secure aggregation needs the signed roster of identity keys {self.roster} "
                f"({exc.strerror}): `step-coord enroll` writes it in a deployment, step-sim in "
                "a simulation's run folder"
            ) from None

    # --- the sum ----------------------------------------------------------------------------

    def _mean(self, total: np.ndarray, count: int, config: P.RoundConfig) -> tuple[Weights, int]:
        layout = self.layout(config)
        if not isinstance(self.strategy, CentralDP):
            return mean_update(total, count, layout, self.grid)
        sums, tokens, _ = summed_update(total, count, layout, self.grid)
        return self.strategy.release(sums, count, self.sensitivity(layout)), tokens

    def sensitivity(self, layout: Layout) -> float:
        """The most one node moves the sum (L2): its clip, plus what stochastic rounding can
        add (less than a grid step per coordinate)."""
        return self.grid.clip + self.grid.step * math.sqrt(layout.params)


def _bytes_of(record: dict[str, Any]) -> int:
    """A stage record's payload: its texts' and bytes' lengths, 8 per number."""
    sizes = (len(v) if isinstance(v, (str, bytes)) else 8 for v in record.values())
    return sum(sizes) + sum(len(k) for k in record)
