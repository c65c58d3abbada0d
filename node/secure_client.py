"""A node's side of a secure round (README "Secure aggregation"): four Flower messages,
``train.secagg_keys``, ``train.secagg_shares``, ``train.secagg_input`` (train, then send the
masked update) and ``train.secagg_reveal``, registered on the node's ClientApp.

Between them the node keeps the round's secrets (its private keys, self-mask seed, the shares it
holds) in Flower's ``context.state``, which never leaves the node's side; they are deleted
after the reveal. A node that restarts mid-round has lost them and leaves that round. On disk it
keeps only what stops replays (``secagg.json``: the newest round and roster version it took
part in) and the rounding residual (secure_residual.py).

Every stage checks the request against the stage the node is in and the round id it holds: a
stage asked twice, out of order, or for another round is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from node import client_app
from node.client_app import Trained, error_reply, node_info
from node.secure_residual import SecureResidual
from node.settings import NodeSettings
from step_common.errors import StepError
from step_common.fileio import atomic_write_json
from step_common.signatures import read_verify_key
from step_fed import protocol as P
from step_fed.identity import NodeSigner
from step_fed.secagg.client import SecAggClient
from step_fed.secagg.keys import RoundKeys
from step_fed.secagg.roster import verified_roster
from step_fed.secagg.setup import SecAggError
from step_fed.secagg.shamir import Share
from step_fed.secagg.stages import (
    KeysRequest,
    RevealRequest,
    SharesRequest,
    boxes_for,
    boxes_reply,
    round_id_of,
)
from step_fed.secagg.vector import Layout, contribution, node_levels
from step_fed.secagg.wire import advert_record, pack, reveal_record

SESSION = "step-secagg"
"""The context.state record of the round in progress."""
SEEN = "secagg.json"
"""In the node's state folder: the newest round and roster version it took part in."""
MIN_SURVIVORS = 2
"""A node unmasks no sum of fewer nodes than this, whatever the coordinator asks."""
_REQUEST = "request/"


def keys(msg: Message, context: Context) -> Message:
    """Stage 1: check the roster, draw the round's keys, answer with the signed advert."""
    try:
        settings = client_app.node_settings(context)
        req = KeysRequest.from_wire(_config(msg))
        signer = _signer(settings)
        roster = _roster(settings, req, signer)
        fresh = RoundKeys()
        channel, mask = fresh.secrets()
        seed = os.urandom(32)
        advert = fresh.advert(req.round_id, settings.name, signer)
        _put(context, {"stage": "keys", "round": req.round, P.SECAGG: req.round_id,
                       "channel": channel, "mask": mask, "self-seed": seed,
                       "roster": json.dumps(roster)})  # fmt: skip
    except (StepError, ValueError) as exc:
        return error_reply(msg, exc)
    return _reply(msg, settings, dict(advert_record(advert)))


def shares(msg: Message, context: Context) -> Message:
    """Stage 2: verify the neighbours' adverts against their enrolled keys; seal to each
    neighbour its shares of this node's self-mask seed and mask key."""
    try:
        settings = client_app.node_settings(context)
        wire = _stage_record(msg)
        session = _session(context, "keys", round_id_of(wire))
        with _leaving_on_error(context):
            req = SharesRequest.from_wire({**_config(msg), **wire})
            client = _client(settings, session, req)
            sealed = client.share_keys(req.adverts)
            assert client.own is not None
            kept = {f"{_REQUEST}{k}": v for k, v in {**_config(msg), **wire}.items()}
            own = client.own[0].to_bytes() + client.own[1].to_bytes()
            _put(context, {**session, **kept, "own": own, "stage": "shares"})
    except (StepError, ValueError) as exc:
        return error_reply(msg, exc)
    return _reply(msg, settings, boxes_reply(sealed))


def masked_input(msg: Message, context: Context) -> Message:
    """Stage 3: train the round, turn the update into the round's integer vector (scaled by
    this node's token share, clipped, rounded with error feedback) and send it masked."""
    try:
        settings = client_app.node_settings(context)
        wire = _stage_record(msg)
        session = _session(context, "shares", round_id_of(wire))
        with _leaving_on_error(context):
            req = _kept_request(session)
            asked = _config(msg).get(P.CFG_ROUND)
            if asked != session["round"]:
                raise SecAggError(f"a train message of round {asked} in secure round "
                                  f"{session[P.SECAGG]!s} of round {session['round']}")  # fmt: skip
            done = client_app.train_message(msg, context)
            levels = _levels(done, req)
            client = _client(settings, session, req)
            client.peers = dict(req.adverts)  # verified at stage 2, kept on this side since
            masked = client.masked_input(levels, boxes_for(wire, settings.name))
            held = {f"held/{n}": s.to_bytes() + m.to_bytes()
                    for n, (s, m) in client.held.items()}  # fmt: skip
            _put(context, {**session, **held, "stage": "input"})
    except (StepError, ValueError) as exc:
        return error_reply(msg, exc)
    arrays = ArrayRecord({P.SECAGG_MASKED: torch.from_numpy(pack(masked, req.setup.bits))})
    metrics = _metrics(done, arrays.count_bytes())
    content = RecordDict({P.ARRAYS: arrays, P.METRICS: MetricRecord(metrics),
                          P.NODE_INFO: client_app.reply_info(done, context)})  # fmt: skip
    client_app.report_trained(context, done, metrics)
    return Message(content, reply_to=msg)


def reveal(msg: Message, context: Context) -> Message:
    """Stage 4: the shares that remove the survivors' self-masks and the dropped nodes'
    pairwise masks (never both of one node); then the round's secrets are deleted."""
    try:
        settings = client_app.node_settings(context)
        req = RevealRequest.from_wire(_stage_record(msg))
        session = _session(context, "input", req.round_id)
        with _leaving(context):  # one reveal per round, whatever it answers
            client = _client(settings, session, _kept_request(session))
            client.held = _held(session)
            client.own = _pair(bytes(session["own"]))
            revealed = client.unmask(req.survivors, req.dropped)
    except (StepError, ValueError) as exc:
        return error_reply(msg, exc)
    return _reply(msg, settings, dict(reveal_record(revealed)))


STAGES: dict[str, Callable[[Message, Context], Message]] = {
    "secagg_keys": keys,
    "secagg_shares": shares,
    "secagg_input": masked_input,
    "secagg_reveal": reveal,
}
"""Each stage's handler, by its message type's action."""

for _action, _handler in STAGES.items():
    client_app.app.train(_action)(_handler)


# --- the round's arithmetic ---------------------------------------------------------------------


def _levels(done: Trained, req: SharesRequest) -> np.ndarray:
    """The node's vector for the sum (vector.py), its residual carried to the next round."""
    update, terms, grid = done.result.update, req.terms, req.setup.grid
    shapes = {k: v.shape for k, v in update.items()}
    rows = (P.EMBEDDING_WEIGHT, P.OUTPUT_WEIGHT) if terms.token_rows else ()
    layout = Layout(shapes, terms.nominal, grid.bits, rows, terms.row_cap)
    if layout.length != req.setup.length:
        raise SecAggError(f"the round sums vectors of {req.setup.length} values; this node's "
                          f"model gives {layout.length}")  # fmt: skip
    tokens = sum(done.result.tokens_per_language.values())
    if tokens > terms.nominal:
        raise SecAggError(f"trained {tokens} tokens, more than the round's {terms.nominal}")
    counts = done.result.token_counts
    if rows and counts is None:  # DP-SGD reports no counts: every row weighs the node's tokens
        counts = torch.full((layout.vocab,), tokens, dtype=torch.int64)
    scale = terms.nominal if terms.equal_weights else tokens
    scaled = contribution(update, scale, counts, layout)
    store = SecureResidual(done.settings.state_dir)
    scaled += store.before(done.cfg.round, layout.params)
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    levels, residual = node_levels(scaled, tokens, counts, layout, grid, rng)
    store.save(done.cfg.round, residual)
    return levels


def _metrics(done: Trained, sent: int) -> dict[str, Any]:
    """A secure reply's metrics: no token counts (they are in the sum), nor the loss (one
    node's loss tells of its update); bytes, the time (not under DP: it grows with the drawn
    batches) and under DP the epsilon spent."""
    metrics: dict[str, Any] = {
        P.M_ROUND: done.cfg.round,
        P.M_BYTES_RECEIVED: done.received,
        P.M_BYTES_SENT: sent,
    }
    if done.spent is None:
        metrics[P.M_WALL_S] = done.result.wall_s
    else:
        metrics[P.M_EPSILON] = done.spent.epsilon
        metrics[P.M_DELTA] = done.spent.delta
    client_app.add_eval_metrics(metrics, done.evaluated)
    return metrics


# --- the session and its checks -----------------------------------------------------------------


def _signer(settings: NodeSettings) -> NodeSigner:
    if settings.key is None:
        raise StepError(f"node {settings.name} has no identity key to sign its secure "
                        "round keys with: give node.yaml `key` (step-sim writes one)")  # fmt: skip
    return NodeSigner(settings.key)


def _roster(settings: NodeSettings, req: KeysRequest, signer: NodeSigner) -> dict[str, str]:
    """The roster's identity keys, if the federation key signed it, it is not older than one
    this node saw, it lists this node under its own key, and the round is not an old one."""
    if settings.federation_key is None:
        raise StepError(f"node {settings.name} has no federation_key in node.yaml: it cannot "
                        "check the roster of identity keys secure aggregation needs")  # fmt: skip
    seen_path = Path(settings.state_dir) / SEEN
    seen = json.loads(seen_path.read_text()) if seen_path.is_file() else {}
    try:
        doc = json.loads(req.roster)
    except ValueError:
        raise SecAggError("the roster of identity keys is not JSON") from None
    key = read_verify_key(settings.federation_key)
    roster = verified_roster(doc, key, int(seen.get("roster_version", 0)))
    if roster.get(settings.name) != signer.public_line:
        raise SecAggError(f"the roster does not list {settings.name} under this node's key: "
                          "ask the coordinator admin to enroll node.pub")  # fmt: skip
    if req.round < int(seen.get("round", 0)):
        raise SecAggError(f"asked to join secure round {req.round}, older than round "
                          f"{seen['round']} this node took part in: a replay, refused")  # fmt: skip
    seen_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(seen_path, {"round": req.round, "roster_version": int(doc["version"])})
    return roster


def _client(settings: NodeSettings, session: Mapping[str, Any], req: SharesRequest) -> SecAggClient:
    setup = req.setup
    if setup.round_id != session[P.SECAGG]:
        held = session[P.SECAGG]
        raise SecAggError(f"a setup for round {setup.round_id}; this node is in {held!s}")
    roster: dict[str, str] = json.loads(session["roster"])
    strangers = sorted(set(setup.nodes) - set(roster))
    if strangers:
        raise SecAggError(f"the round's nodes {strangers} are not in the signed roster: refused")
    if setup.min_survivors < MIN_SURVIVORS:
        raise SecAggError(f"the round would unmask a sum of {setup.min_survivors} node(s); this "
                          f"node takes part only in sums of at least {MIN_SURVIVORS}")  # fmt: skip
    keys = RoundKeys(bytes(session["channel"]), bytes(session["mask"]))
    return SecAggClient(settings.name, setup, _signer(settings), roster, keys,
                        bytes(session["self-seed"]))  # fmt: skip


def _session(context: Context, stage: str, round_id: str) -> dict[str, Any]:
    """The round in progress, if it is at ``stage`` and ``round_id``; SecAggError otherwise."""
    record = context.state.get(SESSION)
    session = dict(record.items()) if isinstance(record, ConfigRecord) else {}
    held, at = str(session.get(P.SECAGG, "none")), str(session.get("stage"))
    if held != round_id:
        raise SecAggError(f"no secure round {round_id} in progress on this node (it holds "
                          f"{held}): a replayed or stale message")  # fmt: skip
    if at != stage:
        raise SecAggError(f"secure round {round_id} is not at the stage this message follows "
                          f"(at {at}, the message follows {stage}): refused")  # fmt: skip
    return session


def _kept_request(session: Mapping[str, Any]) -> SharesRequest:
    return SharesRequest.from_wire(
        {k[len(_REQUEST) :]: v for k, v in session.items() if k.startswith(_REQUEST)}
    )


def _held(session: Mapping[str, Any]) -> dict[str, tuple[Share, Share]]:
    return {k[5:]: _pair(bytes(v)) for k, v in session.items() if k.startswith("held/")}


def _pair(value: bytes) -> tuple[Share, Share]:
    """A node's (self-mask seed, mask key) shares, as kept: one after the other."""
    half = len(value) // 2
    return Share.from_bytes(value[:half]), Share.from_bytes(value[half:])


@contextmanager
def _leaving_on_error(context: Context) -> Iterator[None]:
    """A stage of the round this node is in that fails ends its part in the round: its
    secrets are deleted (a coordinator cannot ask again until some request passes)."""
    try:
        yield
    except BaseException:
        context.state.pop(SESSION, None)
        raise


@contextmanager
def _leaving(context: Context) -> Iterator[None]:
    """The round's last stage: its secrets are deleted however it ends."""
    try:
        yield
    finally:
        context.state.pop(SESSION, None)


def _put(context: Context, session: Mapping[str, Any]) -> None:
    context.state[SESSION] = ConfigRecord(dict(session))


def _config(msg: Message) -> dict[str, Any]:
    record = msg.content.get(P.CONFIG)
    return dict(record.items()) if isinstance(record, ConfigRecord) else {}


def _stage_record(msg: Message) -> dict[str, Any]:
    record = msg.content.get(P.SECAGG)
    if not isinstance(record, ConfigRecord):
        raise SecAggError("a secure-aggregation message without its stage record")
    return dict(record.items())


def _reply(msg: Message, settings: NodeSettings, answer: dict[str, Any]) -> Message:
    content = RecordDict({P.SECAGG: ConfigRecord(answer), P.NODE_INFO: node_info(settings)})
    return Message(content, reply_to=msg)
