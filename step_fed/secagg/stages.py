"""What the coordinator asks of a node at each stage of a secure-aggregation round, as the flat
``{key: str | int | float | bytes}`` mapping a Flower ConfigRecord carries, and back.

    keys     round, round id, the signed roster          -> the node's signed advert
    shares   the round's setup, the live nodes' adverts  -> sealed shares, one per neighbour
    train    (the round config, weights) + the shares     -> the masked input (an array)
    reveal   who is in the sum, who dropped               -> shares of the secrets to remove

Every request names the round id; a node acts only on the one of the round it is in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from step_fed.secagg.grid import Grid
from step_fed.secagg.keys import Advert
from step_fed.secagg.setup import RoundSetup, SecAggError
from step_fed.secagg.wire import advert_of, advert_record

Wire = dict[str, Any]
ROUND_ID = "secagg.round-id"
_ADVERT = "advert/"
_BOX = "box/"


def round_id_of(wire: Mapping[str, object]) -> str:
    value = wire.get(ROUND_ID)
    if not isinstance(value, str) or not value:
        raise SecAggError(f"a secure-aggregation message without {ROUND_ID!r}")
    return value


def _get(wire: Mapping[str, object], key: str, kind: type) -> Any:
    value = wire.get(f"secagg.{key}")
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SecAggError(f"a secure-aggregation message whose secagg.{key} is not {kind.__name__}")
    return value


@dataclass(frozen=True)
class KeysRequest:
    round: int
    round_id: str
    roster: str
    """The signed roster of identity keys, as JSON (roster.py)."""

    def to_wire(self) -> Wire:
        return {"secagg.round": self.round, ROUND_ID: self.round_id, "secagg.roster": self.roster}

    @classmethod
    def from_wire(cls, wire: Mapping[str, object]) -> KeysRequest:
        return cls(_get(wire, "round", int), round_id_of(wire), _get(wire, "roster", str))


@dataclass(frozen=True)
class Terms:
    """How a node turns its update into the vector it masks (vector.py)."""

    nominal: int
    """W: the most tokens a node trains in a round."""
    token_rows: bool
    """Weigh the input embedding's and output head's rows by token counts."""
    equal_weights: bool
    """Central DP: every node weighs 1 (contributes its whole clipped update)."""
    row_cap: int = 1
    """Token rows: a node's row r weighs min(count, row_cap) / row_cap (vector.py)."""


@dataclass(frozen=True)
class SharesRequest:
    setup: RoundSetup
    terms: Terms
    adverts: dict[str, Advert]

    def to_wire(self) -> Wire:
        s, t = self.setup, self.terms
        wire: Wire = {
            ROUND_ID: s.round_id,
            "secagg.nodes": json.dumps(list(s.nodes)),
            "secagg.degree": s.degree,
            "secagg.threshold": s.threshold,
            "secagg.min-survivors": s.min_survivors,
            "secagg.clip": s.grid.clip,
            "secagg.range": s.grid.range,
            "secagg.bits": s.grid.bits,
            "secagg.length": s.length,
            "secagg.nominal": t.nominal,
            "secagg.token-rows": int(t.token_rows),
            "secagg.equal-weights": int(t.equal_weights),
            "secagg.row-cap": t.row_cap,
        }
        for node, advert in self.adverts.items():
            for field, value in advert_record(advert).items():
                wire[f"{_ADVERT}{node}/{field}"] = value
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, object]) -> SharesRequest:
        try:
            nodes = tuple(str(n) for n in json.loads(_get(wire, "nodes", str)))
        except (ValueError, TypeError):
            raise SecAggError("a secure-aggregation setup whose node list is not JSON") from None
        grid = Grid(float(_get(wire, "clip", float)), float(_get(wire, "range", float)),
                    _get(wire, "bits", int))  # fmt: skip
        if not (grid.clip > 0 and grid.range > 0 and 1 <= grid.bits <= 16):
            raise SecAggError(f"a secure-aggregation grid out of range: {grid}")
        setup = RoundSetup(round_id_of(wire), nodes, _get(wire, "degree", int),
                           _get(wire, "threshold", int), _get(wire, "min-survivors", int), grid,
                           _get(wire, "length", int))  # fmt: skip
        terms = Terms(
            _get(wire, "nominal", int),
            bool(_get(wire, "token-rows", int)),
            bool(_get(wire, "equal-weights", int)),
            _get(wire, "row-cap", int),
        )
        records: dict[str, dict[str, object]] = {}
        for key, value in wire.items():
            if key.startswith(_ADVERT):
                node, _, field = key[len(_ADVERT) :].rpartition("/")
                records.setdefault(node, {})[field] = value
        adverts = {n: advert_of(r, f"the advert relayed as {n}'s") for n, r in records.items()}
        return cls(setup, terms, adverts)


def boxes_wire(boxes: Mapping[str, Mapping[str, bytes]]) -> Wire:
    """``{sender: {recipient: sealed}}`` as flat keys ``box/<sender>/<recipient>``."""
    return {f"{_BOX}{s}/{r}": box for s, to in boxes.items() for r, box in to.items()}


def boxes_for(wire: Mapping[str, object], recipient: str) -> dict[str, bytes]:
    """The sealed shares addressed to ``recipient``, by sender."""
    out = {}
    for key, value in wire.items():
        if key.startswith(_BOX) and isinstance(value, bytes):
            sender, _, to = key[len(_BOX) :].rpartition("/")
            if to == recipient:
                out[sender] = value
    return out


def sent_boxes(wire: Mapping[str, object], source: str) -> dict[str, bytes]:
    """A node's shares reply ``{box/<recipient>: sealed}`` -> ``{recipient: sealed}``."""
    out = {}
    for key, value in wire.items():
        if not key.startswith(_BOX) or not isinstance(value, bytes):
            raise SecAggError(f"{source}: a malformed shares reply ({key!r})")
        out[key[len(_BOX) :]] = value
    return out


def boxes_reply(sealed: Mapping[str, bytes]) -> Wire:
    return {f"{_BOX}{r}": box for r, box in sealed.items()}


@dataclass(frozen=True)
class RevealRequest:
    round_id: str
    survivors: list[str]
    dropped: list[str]

    def to_wire(self) -> Wire:
        return {ROUND_ID: self.round_id, "secagg.survivors": json.dumps(self.survivors),
                "secagg.dropped": json.dumps(self.dropped)}  # fmt: skip

    @classmethod
    def from_wire(cls, wire: Mapping[str, object]) -> RevealRequest:
        try:
            alive = [str(n) for n in json.loads(_get(wire, "survivors", str))]
            gone = [str(n) for n in json.loads(_get(wire, "dropped", str))]
        except (ValueError, TypeError):
            raise SecAggError("a reveal request whose node lists are not JSON") from None
        return cls(round_id_of(wire), alive, gone)
