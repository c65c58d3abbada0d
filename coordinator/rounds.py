"""The round loop: broadcast, collect, check, aggregate, outer step, evaluate, checkpoint.

Transport-neutral: ``Transport`` is whatever delivers messages to nodes (Flower's Grid in the
ServerApp; a plain loop in tests), so the algorithm is tested without starting a federation.

After every round the global weights, the strategy's state, the round number and the metrics
history are committed atomically (a step_model checkpoint in the run folder,
step_model/run_folder.py); ``resume=True`` continues from the last one. Replies are aggregated in
node-name order, so a resumed run reproduces an uninterrupted one bit for bit (nodes restore
their own state, see node/state.py). What each message carries (the weights whole, or intN-delta
changes and resyncs) is coordinator/broadcast.py's ``Broadcaster``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.broadcast import Broadcaster
from coordinator.config import SEEN_ROWS_LEVELS, FederationConfig, check_same_settings
from coordinator.in_order import InOrder
from coordinator.phases import Phases
from coordinator.privacy_reports import ReportPolicy
from coordinator.records import latest_epsilons, read_records
from coordinator.replies import (
    EvalReply,
    Rejection,
    TrainReply,
    bits_per_byte,
    check_epsilon,
    check_eval_reply,
    check_train_reply,
)
from coordinator.secure_round import SecureRounds
from coordinator.spill import Spill
from coordinator.strategy import CentralDP, make_strategy
from coordinator.strategy.fold import RoundAggregate, node_order
from coordinator.tensorboard_log import TensorBoardLog
from step_common.errors import StepError
from step_fed import protocol as P
from step_fed.secagg.roster import ROSTER
from step_fed.transport import RawReply, Transport, Weights
from step_model.checkpoint import Checkpoint, initial_weights
from step_model.config import ModelConfig, preset
from step_model.evaluate import mean_bpb
from step_model.run_folder import RunFolder
from step_model.tokenizer import Tokenizer, resolve_tokenizer

log = logging.getLogger("step.coordinator")


@dataclass
class Totals:
    bytes_down: int = 0
    bytes_up: int = 0
    tokens: int = 0
    tokens_per_language: dict[str, int] = field(default_factory=dict)


@dataclass
class Tally:
    """What a round keeps of its replies: no updates (they are folded and dropped)."""

    ok: list[TrainReply] = field(default_factory=list)
    """The accepted replies, without their updates."""
    rejected: list[Rejection] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)
    """Node -> the ledger reset the admin accepted, used this round."""
    raws: list[RawReply] = field(default_factory=list)
    """Every reply's metrics (an interim evaluation rides on them), without arrays."""


class RoundRunner:
    def __init__(
        self,
        cfg: FederationConfig,
        run_dir: Path,
        transport: Transport,
        resume: bool = False,
        corpus: Path | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        reports: ReportPolicy | None = None,
        roster: Path | None = None,
    ) -> None:
        """``corpus`` is only needed to train a ``bpe:N`` tokenizer (simulations); ``reports``:
        what a deployment requires of DP nodes' epsilon reports (privacy_reports.py);
        ``roster``: the signed roster of identity keys secure aggregation sends the nodes
        (default: ``roster.json`` in the run folder, where step-sim writes it)."""
        self.cfg, self.run_dir, self.transport = cfg, Path(run_dir), transport
        self.on_round = on_round
        self.reports = reports
        self.tokenizer: Tokenizer = resolve_tokenizer(cfg.tokenizer, corpus, self.run_dir)
        self.tokenizer_json = self.tokenizer.to_json()
        self.model_config: ModelConfig = preset(cfg.preset).with_vocab(self.tokenizer.vocab_size)
        if cfg.seq_len > self.model_config.max_seq_len:
            raise StepError(
                f"federation.seq_len {cfg.seq_len} exceeds the {cfg.preset} preset's "
                f"max_seq_len {self.model_config.max_seq_len}"
            )
        self.strategy = make_strategy(cfg)
        self.broadcaster = Broadcaster(cfg, transport)
        self.spill = Spill(self.run_dir, cfg.update_memory_mib * 2**20)
        self.folder = RunFolder(self.run_dir, "round", digits=6, keep=cfg.keep_checkpoints)
        self.round = 0
        self.totals = Totals()
        self.history: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.elapsed_before = 0.0
        self._start(resume)
        self.shapes = {k: v.shape for k, v in self.weights.items()}
        self.params = sum(v.numel() for v in self.weights.values())
        self.secure = None
        if cfg.secure_aggregation:
            roster_file = roster or self.run_dir / ROSTER
            self.secure = SecureRounds(
                cfg, transport, self.broadcaster, self.strategy, roster_file, self.shapes
            )
        self.most_waiting = 0
        """The most updates that waited for their turn at once in the last round (they
        overtook a node before them in name order; bench/coordinator_memory.py reports it)."""
        self.spilled = 0
        """Updates that waited on disk in the last round (beyond update_memory_mib)."""

    # --- state ---------------------------------------------------------------------------------

    def _start(self, resume: bool) -> None:
        """The weights to start from: the last committed round's, or a new run's first."""
        self.folder.check_start(
            resume,
            occupied=f"{self.run_dir} already holds a federated run: resume it or "
            "choose another run folder",
            empty=f"nothing to resume in {self.run_dir}: start without --resume",
        )
        if resume:
            self._restore()
            return
        self.weights: Weights = initial_weights(
            self.model_config, self.tokenizer, self.cfg.seed, self.cfg.init_from
        )
        # fresh weights: the nodes draw them from the seed (unless they are a warm start's)
        self.broadcaster.start_fresh(seeded=not self.cfg.init_from)

    def _check_resumable(self, ckpt: Checkpoint) -> None:
        if ckpt.state.get("mode") == "centralized":  # step_sim/centralized.py's checkpoints
            raise StepError(
                f"{self.run_dir} holds a centralized baseline, not a federation: resume it "
                "with step-sim --centralized --resume"
            )
        check_same_settings(self.cfg, ckpt.state)

    def _restore(self) -> None:
        """Continue after the run folder's last committed round (the folder drops the metrics
        records of the rounds after it: they will be run again)."""
        ckpt = self.folder.resume(self._check_resumable)
        self.weights = dict(ckpt.weights)  # loaded for us: no copy (one model less)
        # the optimizer tree: the strategy's state, and the intN-delta view kept beside it
        self.strategy.load_state_dict(self.broadcaster.restore(ckpt.optimizer))
        self.round = int(ckpt.state["round"])
        self.totals = Totals(**ckpt.state["totals"])
        self.history = list(ckpt.state["history"])
        self.elapsed_before = float(ckpt.state.get("wall_s", 0.0))
        self._log_missing_records()
        log.info("resuming after round %d", self.round)

    def _log_missing_records(self) -> None:
        """The committed rounds' records that metrics.jsonl lacks (a crash between the commit
        and the appends), from the checkpoint's history: every committed round is logged."""
        logged = {(r.get("kind"), r.get("round")) for r in read_records(self.folder.metrics)}
        for rec in self.history:
            if (rec.get("kind"), rec.get("round")) not in logged:
                log.info("metrics.jsonl lacked the %s record of round %s: written from the "
                         "checkpoint", rec.get("kind"), rec.get("round"))  # fmt: skip
                self.folder.log(rec)

    def _save(self) -> None:
        state = {
            "round": self.round,
            "totals": asdict(self.totals),
            "history": self.history,
            "federation": self.cfg.to_dict(),
            "wall_s": self.wall_s(),
        }
        optimizer = self.broadcaster.with_view(self.strategy.state_dict())
        ckpt = Checkpoint(self.model_config, self.weights, self.tokenizer, state, optimizer)
        self.folder.save(ckpt)

    def wall_s(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # --- one round -----------------------------------------------------------------------------

    def eval_first(self, round_: int) -> bool:
        """Interim evaluations ride on the next round's train message: the nodes evaluate the
        weights they received before training on them, so evaluating costs no download. The
        last round's result is evaluated by its own message (all held-out text)."""
        return round_ > 1 and (round_ - 1) % self.cfg.eval_every == 0

    def round_config(self, round_: int, final_eval: bool = False) -> P.RoundConfig:
        c = self.cfg
        return P.RoundConfig(
            round=round_,
            total_rounds=c.rounds,
            inner_steps=c.steps_in_round(round_),
            inner_lr=c.inner_lr,
            **c.shared_schedule(),  # the LocalSchedule fields, as the federation set them
            update_encoding=c.update_encoding,
            model_json=json.dumps(self.model_config.to_dict(), sort_keys=True),
            tokenizer=self.tokenizer_json,
            tokenizer_sha256=hashlib.sha256(self.tokenizer_json.encode("utf-8")).hexdigest(),
            eval_max_tokens=0 if final_eval else c.eval_max_tokens,
            broadcast_encoding=c.broadcast_encoding,
            drift_correction=int(c.drift_correction),
            eval_first=int(not final_eval and self.eval_first(round_)),
            step_offset=c.step_offset(round_),
            total_steps=c.total_inner_steps,
            seen_rows=self.seen_rows,
        )

    @property
    def seen_rows(self) -> int:
        """The round config's ``seen_rows``: nodes send only the rows of the tokens they saw,
        and only where the other rows would be weighed 0 (token rows, mean aggregation; the
        robust rules and central DP's equal-weight sum read every row)."""
        c = self.cfg
        if not c.token_rows or c.aggregation != "mean" or c.central_dp_noise > 0:
            return 0
        if c.secure_aggregation:  # every node's vector has the same length
            return 0
        return SEEN_ROWS_LEVELS[c.seen_rows]

    def train_round(self, round_: int) -> dict[str, Any]:
        return self._train_round(round_)[0]

    def _train_round(self, round_: int) -> tuple[dict[str, Any], list[RawReply]]:
        """One round: each reply is checked and folded into the aggregate when it arrives (in
        node-name order, in_order.py), then dropped; the replies kept are metrics only."""
        if self.secure is not None:
            return self._secure_round(round_, self.secure)
        t0 = time.monotonic()
        config = self.round_config(round_)
        self.transport.resent.clear()
        clock = Phases()
        # Every connected node is asked every round: sample rate 1 (no amplification).
        aggregate = self.strategy.start(self.cfg.token_rows, 1.0, park=self.spill.park)
        try:
            tally = self._take_replies(config, aggregate, clock)
            self._enough(round_, tally.ok, tally.rejected)
            with clock("aggregate"):
                delta = self.strategy.finish(aggregate)
        finally:
            self.spilled = self.spill.written
            self.spill.clear()
        with clock("step"):
            self.weights = self.strategy.step(self.weights, delta)
        del delta
        clock.add("encode", self.broadcaster.encode_s)
        clock.add("wait", -self.broadcaster.encode_s)  # the encoding ran inside the first wait
        bytes_down = self.broadcaster.sent
        self._count(tally.ok, bytes_down)
        record = self._round_record(
            round_, tally.ok, tally.rejected, bytes_down, time.monotonic() - t0
        )
        record["phase_s"] = clock.record()
        if tally.accepted:
            record["privacy_reset_accepted"] = tally.accepted
        return record, tally.raws

    def _secure_round(
        self, round_: int, secure: SecureRounds
    ) -> tuple[dict[str, Any], list[RawReply]]:
        """A round under secure aggregation (secure_round.py): the mean comes from the sum of
        the nodes' masked vectors; no single update is seen, so none is checked or recorded."""
        t0 = time.monotonic()
        config = self.round_config(round_)
        self.transport.resent.clear()
        clock = Phases()
        spent = latest_epsilons(self.history)
        accepted: dict[str, str] = {}
        with clock("wait"):
            result = secure.run(
                config,
                self.weights,
                lambda reply: self._check_privacy(reply, round_, spent, accepted),
            )
        self._enough(round_, result.ok, result.rejected)
        with clock("step"):
            self.weights = self.strategy.step(self.weights, result.delta)
        self.totals.bytes_up += result.bytes_up
        self.totals.bytes_down += result.bytes_down
        self.totals.tokens += result.tokens
        record = self._round_record(
            round_, result.ok, result.rejected, result.bytes_down, time.monotonic() - t0
        )
        record["tokens"] = result.tokens
        record["bytes_up"] = result.bytes_up
        record["secure"] = result.record
        record["phase_s"] = clock.record()
        if accepted:
            record["privacy_reset_accepted"] = accepted
        return record, result.raws

    def _take_replies(
        self, config: P.RoundConfig, aggregate: RoundAggregate, clock: Phases
    ) -> Tally:
        """Send the round; check each reply as it comes and hand its update to ``aggregate`` in
        its turn."""
        asked = self.broadcaster.nodes()
        turns: InOrder[TrainReply] = InOrder(
            self._fold_order(asked), key=node_order, park=self.spill.park
        )
        tally = Tally()
        spent = latest_epsilons(self.history)  # each DP node's last report (eval records: none)
        replies = self.broadcaster.send("train", config, self.weights, asked)
        for raw in clock.timed(replies, "wait"):
            tally.raws.append(replace(raw, arrays={}))  # the metrics (interim evaluation) only
            with clock("check"):
                checked = self._checked(raw, config, spent, tally.accepted)
            del raw  # the next reply is pulled while only this one's update waits its turn
            usable = checked if isinstance(checked, TrainReply) else None
            if isinstance(checked, TrainReply):
                tally.ok.append(replace(checked, delta={}))
            else:
                tally.rejected.append(checked)
                log.warning("round %d: rejected %s: %s", config.round, checked.node,
                            checked.reason)  # fmt: skip
            with clock("aggregate"):
                _add_all(aggregate, turns.put(checked.node_id, usable))
            del checked, usable
        with clock("aggregate"):
            _add_all(aggregate, turns.rest())
        self.most_waiting = turns.most_waiting
        return tally

    def _fold_order(self, asked: list[int]) -> list[int] | None:
        """The node ids in the order their updates are added (node name, then id), when the
        transport knows every name up front; None: sorted at the end of the round."""
        names = {n: self.transport.name_of(n) for n in asked}
        if any(name is None for name in names.values()):
            return None
        return sorted(asked, key=lambda n: (names[n], n))

    def _checked(
        self, raw: RawReply, config: P.RoundConfig, spent: dict[str, float],
        accepted: dict[str, str],
    ) -> TrainReply | Rejection:  # fmt: skip
        """One reply checked: the update (keys, shapes, finite, norm) and the privacy report;
        a ledger reset the admin accepted and used here is noted in ``accepted``."""
        checked = check_train_reply(
            raw,
            config.round,
            self.cfg.update_encoding,
            self.shapes,
            self.cfg.max_update_norm,
            max_tokens=config.inner_steps * config.batch_size * config.seq_len,
            seen_rows=config.seen_rows,
            exact_norms=not isinstance(self.strategy, CentralDP),
        )
        return self._check_privacy(checked, config.round, spent, accepted)

    def _enough(self, round_: int, ok: list[TrainReply], rejected: list[Rejection]) -> None:
        """StepError when fewer than min_nodes updates passed."""
        if len(ok) < self.cfg.min_nodes:
            reasons = "; ".join(f"{rej.node}: {rej.reason}" for rej in rejected) or "no replies"
            raise StepError(
                f"round {round_}: {len(ok)} usable updates, federation.min_nodes is "
                f"{self.cfg.min_nodes} ({reasons})"
            )

    def _count(self, ok: list[TrainReply], bytes_down: int) -> None:
        """Add the round's traffic and tokens to the run's totals."""
        self.totals.bytes_down += bytes_down
        self.totals.bytes_up += sum(r.bytes_up for r in ok)
        self.totals.tokens += sum(r.num_tokens for r in ok)
        per_language = self.totals.tokens_per_language
        for r in ok:
            for lang, n in r.tokens_per_language.items():
                per_language[lang] = per_language.get(lang, 0) + n

    def _round_record(
        self,
        round_: int,
        ok: list[TrainReply],
        rejected: list[Rejection],
        bytes_down: int,
        wall_s: float,
    ) -> dict[str, Any]:
        """What metrics.jsonl keeps of a round: under central DP only what the mechanism
        releases (no loss, no norms, no clip flags)."""
        central = isinstance(self.strategy, CentralDP)
        # Nodes with local DP report no loss (it would not be covered by DP).
        with_loss = [] if central else [r for r in ok if math.isfinite(r.loss)]
        loss_tokens = sum(r.num_tokens for r in with_loss)
        loss = sum(r.loss * r.num_tokens for r in with_loss) / loss_tokens if with_loss else None
        record: dict[str, Any] = {
            "kind": "round",
            "round": round_,
            "nodes": len(ok),
            "rejected": {r.node: r.reason for r in rejected},
            "missing": self.broadcaster.missing,
            "dropped": list(self.strategy.dropped),
            "loss": loss,
            "tokens": sum(r.num_tokens for r in ok),
            "bytes_down": bytes_down,
            "bytes_up": sum(r.bytes_up for r in ok),
            "wall_s": wall_s,
            "node_wall_s": {r.node: round(r.wall_s, 3) for r in ok},
        }
        epsilons = {r.node: r.epsilon for r in ok if r.epsilon is not None}
        if epsilons:
            record["epsilon"] = epsilons
        signed = {r.node: {"report": r.epsilon_report, "signature": r.epsilon_signature}
                  for r in ok if r.epsilon_signature}  # fmt: skip
        if signed:
            record["epsilon_reports"] = signed
        if self.broadcaster.delta is not None:
            record["resynced"] = self.broadcaster.resynced
        if self.transport.resent:
            record["resent"] = sorted(set(self.transport.resent))
        if isinstance(self.strategy, CentralDP):
            record["epsilon_central"] = self.strategy.epsilon()
        elif self.secure is None:  # under secure aggregation no norm is known
            record["update_norm"] = max(r.norm for r in ok)
        return record

    def _check_privacy(
        self,
        reply: TrainReply | Rejection,
        round_: int,
        spent: dict[str, float],
        accepted: dict[str, str],
    ) -> TrainReply | Rejection:
        """A DP node's epsilon report: signed where the deployment requires it, and more than
        the node reported before (``spent``), unless the admin accepted a reset of its ledger
        not used yet (then noted in ``accepted``)."""
        if not isinstance(reply, TrainReply):
            return reply
        why = self.reports.check(reply, round_) if self.reports is not None else None
        if why is not None:
            return Rejection(reply.node_id, reply.node, why)
        lower = check_epsilon(reply, spent.get(reply.node))
        if lower is None:
            return reply
        reset = self.reports.reset_accepted(reply.node) if self.reports is not None else ""
        used = {h.get("privacy_reset_accepted", {}).get(reply.node) for h in self.history}
        if reset and reset not in used:
            log.warning("round %d: %s reports a lower epsilon after a ledger reset that the "
                        "admin accepted at %s", round_, reply.node, reset)  # fmt: skip
            accepted[reply.node] = reset
            return reply
        return lower

    def evaluate(self, round_: int, final: bool) -> dict[str, Any]:
        config = self.round_config(round_, final_eval=final)
        asked = self.broadcaster.nodes()
        raws = list(self.broadcaster.send("evaluate", config, self.weights, asked))
        bytes_down = self.broadcaster.sent
        self.totals.bytes_down += bytes_down
        return {**self._eval_record(raws, round_, round_, final), "bytes_down": bytes_down}

    def _eval_record(
        self, raws: list[RawReply], reply_round: int, of_round: int, final: bool
    ) -> dict[str, Any]:
        """The evaluation of round ``of_round``'s weights, from replies to ``reply_round``."""
        round_ = reply_round
        checked = [check_eval_reply(r, round_) for r in raws]
        ok = [c for c in checked if isinstance(c, EvalReply)]
        for r in checked:
            if isinstance(r, Rejection):
                log.warning("round %d evaluation: rejected %s: %s", of_round, r.node, r.reason)
        bpb = bits_per_byte(ok)
        return {
            "kind": "eval",
            "round": of_round,
            "nodes": len(ok),
            "bpb": bpb,
            "mean_bpb": mean_bpb(bpb) if bpb else None,
            "final": final,
        }

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        for p in self.folder.prepare():
            log.info("removed %s, left by an interrupted write", p.name)
        self.spill.clear()  # updates a crashed round left waiting on disk
        log.info(
            "federation: %s, %d rounds x %d inner steps, %s, %d parameters",
            self.cfg.strategy,
            self.cfg.rounds,
            self.cfg.inner_steps,
            self.cfg.preset,
            self.params,
        )
        board = TensorBoardLog(self.run_dir)
        while self.round < self.cfg.rounds:
            r = self.round + 1
            record, raws = self._train_round(r)
            records = [record]
            if self.eval_first(r):
                records.insert(0, self._eval_record(raws, r, r - 1, final=False))
            if r == self.cfg.rounds:
                records.append(self.evaluate(r, final=True))
            self.round = r
            self.history.extend(records)
            start = time.monotonic()
            self._save()
            record["phase_s"]["checkpoint"] = round(time.monotonic() - start, 3)
            for rec in records:
                self.folder.log({**rec, "wall_total_s": self.wall_s()})
                board.record(rec)
                if self.on_round:
                    self.on_round(rec)
        board.close()
        summary = self.summary()
        self.folder.write_summary(summary)
        return summary

    def summary(self) -> dict[str, Any]:
        evals = [h for h in self.history if h["kind"] == "eval"]
        last = evals[-1] if evals else {"bpb": {}, "mean_bpb": None}
        rounds = [h for h in self.history if h["kind"] == "round"]
        return {
            "mode": "federated",
            "strategy": self.cfg.strategy,
            "rounds": self.round,
            "nodes": max((h["nodes"] for h in rounds), default=0),
            "mean_bpb": last["mean_bpb"],
            "bpb": last["bpb"],
            "bytes_up": self.totals.bytes_up,
            "bytes_down": self.totals.bytes_down,
            **self.communication(rounds),
            "tokens": self.totals.tokens,
            "tokens_per_language": self.totals.tokens_per_language,
            "params": self.params,
            "inner_steps": self.cfg.inner_steps,
            "wall_s": self.wall_s(),
            **self.privacy_summary(),
        }

    def communication(self, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        """``allreduce_bytes``: what synchronous data parallelism would move for the same steps
        and nodes, each node's fp32 gradient once per step (model bytes x steps x nodes: a
        lower bound, a ring all-reduce moves ~2x); ``comm_ratio``: that over the bytes the
        federation moved, up and down (every message's tensors and config text)."""
        steps = sum(self.cfg.steps_in_round(int(r["round"])) * int(r["nodes"]) for r in rounds)
        allreduce = 4 * self.params * steps
        moved = self.totals.bytes_up + self.totals.bytes_down
        return {"allreduce_bytes": allreduce, "comm_ratio": allreduce / moved if moved else None}

    def privacy_summary(self) -> dict[str, Any]:
        """``epsilon``: each DP node's latest epsilon spent (local DP, sample level);
        ``epsilon_central``: the coordinator's (central DP, institution level)."""
        out: dict[str, Any] = {}
        epsilon = latest_epsilons(self.history)
        if epsilon:
            out["epsilon"] = epsilon
            out["privacy_unit"] = f"one training sequence of {self.cfg.seq_len} tokens"
        if isinstance(self.strategy, CentralDP):
            out["epsilon_central"] = self.strategy.epsilon()
            out["delta_central"] = self.cfg.central_dp_delta
            out["central_privacy_unit"] = "one institution (all of its data)"
        return out


def _add_all(aggregate: RoundAggregate, replies: list[TrainReply]) -> None:
    """Fold the updates whose turn has come (their references end with this call)."""
    for reply in replies:
        aggregate.add(reply)
