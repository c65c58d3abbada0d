"""How the node's one ClientApp hands a round to its torchrun workers and gets the update back.

The ClientApp (Flower starts one per message) and the workers (a persistent torchrun group
that ``step-node start`` launches, node/worker_group.py) meet in ``<state_dir>/workers/``:

    inbox/<id>/    round.json (the round config, node name, and under local DP the settings
                   the ledger charged for with the round's secret seed), weights.safetensors
                   (the global weights, fp32): written by the ClientApp in one rename
    outbox/<id>/   update.safetensors (the encoded update), counts.safetensors (token counts;
                   none under DP),
                   result.json (tokens per language, mean loss, seconds), or error.json:
                   written by worker 0 in one rename
    heartbeat      worker 0's pid, what it is doing, refreshed every few seconds

Files, not shared memory or a socket: the weights must cross from one process to another
anyway and a safetensors file on the local disk costs seconds at 1b next to minutes of
training; a request survives a crash of either side (the workers, restarted, find it again;
a ClientApp asked again by the coordinator finds the reply or the request still pending); and
an operator can look at what is waiting with ``ls``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from node.dp_trainer import DPSettings
from node.sharded_dp import WorkerDP
from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_text
from step_fed.protocol import RoundConfig

FOLDER = "workers"
STALE_S = 60.0
"""A heartbeat older than this: the workers are gone (they refresh it every few seconds)."""
START_S = 180.0
"""How long a round waits for workers that have not beaten yet (torchrun starting them)."""
HEARTBEAT_S = 2.0
ORPHAN_S = 24 * 3600.0
"""A reply nobody took for this long (its ClientApp died while waiting) is removed."""
_POLL_S = 0.2


class WorkersDown(StepError):
    """The node's torchrun workers are not running."""


@dataclass(frozen=True)
class Request:
    id: str
    name: str
    cfg: RoundConfig
    folder: Path
    private: WorkerDP | None = None
    """DP-SGD settings and the round's secret seed (the node's own disk, never sent)."""

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.folder / "weights.safetensors"))


@dataclass(frozen=True)
class Reply:
    update: dict[str, torch.Tensor]
    token_counts: torch.Tensor | None
    """(vocab,) target counts; None under DP."""
    tokens: dict[str, int]
    mean_loss: float
    wall_s: float


class WorkerFolder:
    """``<state_dir>/workers/``: the inbox, the outbox and the heartbeat."""

    def __init__(self, state_dir: Path, start_s: float = START_S) -> None:
        self.root = Path(state_dir) / FOLDER
        self.start_s = start_s
        self.inbox, self.outbox = self.root / "inbox", self.root / "outbox"
        self.heartbeat = self.root / "heartbeat"
        self._beaten = ""

    # --- the ClientApp's side -------------------------------------------------------------

    def run_round(
        self,
        name: str,
        cfg: RoundConfig,
        weights: dict[str, torch.Tensor],
        private: WorkerDP | None = None,
    ) -> Reply:
        """Hand the round to the workers and wait for its update; WorkersDown when they are
        not running or stop answering, StepError with their message when the round failed."""
        self._wait_for_start()
        self._check_alive()
        request = uuid.uuid4().hex
        with atomic_directory(self.inbox / request) as tmp:
            save_file({k: v.contiguous() for k, v in weights.items()},
                      str(tmp / "weights.safetensors"))  # fmt: skip
            dp = None if private is None else {**asdict(private.settings), "seed": private.seed}
            doc = {"name": name, "config": cfg.model_dump(), "private": dp}
            atomic_write_text(tmp / "round.json", json.dumps(doc))
        reply = self.outbox / request
        try:
            while not reply.is_dir():
                time.sleep(_POLL_S)
                self._check_alive()
            return _read_reply(reply)
        finally:
            shutil.rmtree(self.inbox / request, ignore_errors=True)
            shutil.rmtree(reply, ignore_errors=True)

    def _wait_for_start(self) -> None:
        """Workers launched with the node (or a simulation) may still be starting: no
        heartbeat yet, or only the stale one of a group that ran before."""
        deadline = time.monotonic() + self.start_s
        while self._age() > STALE_S and time.monotonic() < deadline:
            time.sleep(_POLL_S)

    def _age(self) -> float:
        """Seconds since the last heartbeat (infinite: none)."""
        try:
            return time.time() - self.heartbeat.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def _check_alive(self) -> None:
        age = self._age()
        if age == float("inf"):
            raise WorkersDown(
                f"this node trains on torchrun workers (resources.gpus > 1) but none started "
                f"within {self.start_s:.0f} s ({self.heartbeat} is missing): `step-node start` "
                "starts them; see logs/workers.log in the node folder"
            )
        if age > STALE_S:
            raise WorkersDown(
                f"this node's torchrun workers stopped answering {age:.0f} s ago "
                f"({self.heartbeat}): see the workers' log in the node folder's logs/, then "
                "restart `step-node start`"
            )

    # --- worker 0's side ------------------------------------------------------------------

    def beat(self, doing: str) -> None:
        """Refresh the heartbeat (worker 0, every few seconds): its time only, while what it
        says stays the same (no write and sync of a file every 2 s between rounds)."""
        text = json.dumps({"pid": os.getpid(), "doing": doing})
        if text == self._beaten:
            try:
                os.utime(self.heartbeat)
                return
            except FileNotFoundError:
                pass
        atomic_write_text(self.heartbeat, text)
        self._beaten = text

    def next_request(self) -> Request | None:
        """The oldest complete request without a reply, or None."""
        if not self.inbox.is_dir():
            return None
        waiting = [p for p in self.inbox.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for folder in sorted(waiting, key=lambda p: p.stat().st_mtime):
            reply = self.outbox / folder.name
            if reply.exists():
                if time.time() - reply.stat().st_mtime > ORPHAN_S:  # its ClientApp is gone
                    shutil.rmtree(reply, ignore_errors=True)
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                doc = json.loads((folder / "round.json").read_text(encoding="utf-8"))
                cfg = RoundConfig.model_validate(doc["config"])
                private = _private(doc.get("private"))
            except (OSError, ValueError, KeyError, TypeError) as exc:  # never a poison pill
                self._fail(folder.name, f"the workers could not read the round request: {exc}")
                continue
            return Request(folder.name, str(doc["name"]), cfg, folder, private)
        return None

    def reply(self, request: Request, reply: Reply) -> None:
        with atomic_directory(self.outbox / request.id) as tmp:
            save_file({k: v.contiguous() for k, v in reply.update.items()},
                      str(tmp / "update.safetensors"))  # fmt: skip
            if reply.token_counts is not None:
                save_file({"counts": reply.token_counts}, str(tmp / "counts.safetensors"))
            result = {"tokens": reply.tokens, "mean_loss": reply.mean_loss, "wall_s": reply.wall_s}
            atomic_write_text(tmp / "result.json", json.dumps(result))

    def fail(self, request: Request, message: str) -> None:
        self._fail(request.id, message)

    def _fail(self, request_id: str, message: str) -> None:
        with atomic_directory(self.outbox / request_id) as tmp:
            atomic_write_text(tmp / "error.json", json.dumps({"error": message}))


def _private(doc: dict[str, Any] | None) -> WorkerDP | None:
    if doc is None:
        return None
    settings = DPSettings(float(doc["noise_multiplier"]), float(doc["max_grad_norm"]),
                          int(doc["expected_batch"]), str(doc["mode"]))  # fmt: skip
    return WorkerDP(settings, int(doc["seed"]))


def _read_reply(folder: Path) -> Reply:
    if (folder / "error.json").is_file():
        raise StepError(json.loads((folder / "error.json").read_text(encoding="utf-8"))["error"])
    doc: dict[str, Any] = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    counts = folder / "counts.safetensors"
    return Reply(
        load_file(str(folder / "update.safetensors")),
        load_file(str(counts))["counts"] if counts.is_file() else None,
        {k: int(v) for k, v in doc["tokens"].items()},
        float(doc["mean_loss"]),
        float(doc["wall_s"]),
    )
