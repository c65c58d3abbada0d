"""What a node keeps between rounds: its inner AdamW state and its data position.

DiLoCo keeps each worker's inner optimizer state across rounds; the data position (inner steps
done so far) seeds the node's batches, so it never replays the same batch order; with a
quantised update encoding, the residual of error feedback travels with them (read back tensor by
tensor when the round's update is encoded, so it takes no memory while the node trains). All
are saved after every round, atomically, as ``<state_dir>/rounds/round-<N>/`` (safetensors + JSON +
SHA256SUMS), and the newest few are kept.

A round's state is looked up as "the newest saved before round N", not "the newest": if the
coordinator crashes after this node trained round N but before it committed round N, it resumes
by asking for round N again, and the node starts from exactly the state it had the first time.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from step_common.errors import StepError
from step_common.fileio import (
    atomic_write_text,
    commit_directory,
    remove_stale_temps,
    remove_tree,
    temporary_directory,
)
from step_model.checkpoint import (
    open_tensor_dict,
    read_tree,
    verify_checkpoint,
    write_sums,
    write_tree,
)

KEEP = 3
SHARDED = "optimizer-sharded"
"""The subfolder of a round's state with the AdamW state of torchrun workers (DCP format)."""


@dataclass
class InnerState:
    round: int
    """The round whose training produced this state (0: before any)."""
    node_step: int
    """Inner steps this node has taken in total: its data position."""
    optimizer: dict[str, Any] | None
    """The inner AdamW ``state_dict``, or None before the first round."""
    model_sha: str = ""
    """Which model (config + tokenizer) the optimizer state belongs to."""
    control: dict[str, Any] | None = None
    """For drift correction (trainer.py): the global weights the round started from, this
    node's update, and the round's summed learning rate."""
    residual: Mapping[str, torch.Tensor] | None = None
    """Error feedback (trainer.py): what quantising this node's updates has not sent yet (as
    loaded: read from disk one tensor at a time)."""
    sharded: Path | None = None
    """As loaded from a node that trained on torchrun workers: the folder of its AdamW state,
    saved per shard with torch.distributed.checkpoint (read by any number of workers)."""


class NodeStateStore:
    def __init__(self, state_dir: Path, keep: int = KEEP) -> None:
        self.root = Path(state_dir) / "rounds"
        self.keep = keep

    def _dirs(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith("round-") and p.name[6:].isdigit():
                found.append((int(p.name[6:]), p))
        return sorted(found)

    def latest_before(self, round_: int, verify: bool = True) -> InnerState:
        """The newest state saved by a round before ``round_`` (a fresh state if none), its
        SHA256SUMS checked unless ``verify`` is False (torchrun workers: worker 0 checks)."""
        earlier = [(r, p) for r, p in self._dirs() if r < round_]
        if not earlier:
            return InnerState(round=0, node_step=0, optimizer=None)
        _, path = earlier[-1]
        if verify:
            verify_checkpoint(path, required=("state.json",))
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        optimizer = read_tree(path, "optimizer") if (path / "optimizer.json").is_file() else None
        sharded = path / SHARDED if (path / SHARDED / ".metadata").is_file() else None
        control = read_tree(path, "control") if (path / "control.json").is_file() else None
        residual = (
            open_tensor_dict(path, "residual") if (path / "residual.json").is_file() else None
        )
        return InnerState(
            meta["round"], meta["node_step"], optimizer, meta.get("model_sha", ""), control,
            residual, sharded,
        )  # fmt: skip

    def save(self, state: InnerState) -> None:
        tmp = self.begin(state.round)
        try:
            if state.optimizer is not None:
                write_tree(tmp, "optimizer", state.optimizer)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._unwritable(e) from None
        self.commit(tmp, state)

    def begin(self, round_: int) -> Path:
        """A temporary folder for round ``round_``'s state. Torchrun workers write their shards
        of the AdamW state into its ``optimizer-sharded/`` subfolder (node/sharded_round.py)
        before worker 0 commits it; a kill before that leaves a temporary ``begin`` removes."""
        remove_stale_temps(self.root)  # left by a node killed mid-save
        return temporary_directory(self._target(round_))

    def commit(self, tmp: Path, state: InnerState) -> None:
        """Complete ``tmp`` with the rest of ``state`` and its SHA256SUMS, and make it round
        ``state.round``'s state in one rename (a state of that round saved before, when the
        coordinator resumed and asked for the round again, is replaced)."""
        target = self._target(state.round)
        try:
            meta = {"round": state.round, "node_step": state.node_step,
                    "model_sha": state.model_sha}  # fmt: skip
            atomic_write_text(tmp / "state.json", json.dumps(meta))
            if state.control is not None:
                write_tree(tmp, "control", state.control)
            if state.residual is not None:
                write_tree(tmp, "residual", dict(state.residual))
            write_sums(tmp)
            remove_tree(target)
            commit_directory(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._unwritable(e) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for _, old in self._dirs()[: -self.keep]:
            remove_tree(old)

    def _target(self, round_: int) -> Path:
        return self.root / f"round-{round_:08d}"

    def _unwritable(self, e: OSError) -> StepError:
        return StepError(
            f"cannot write node state in {self.root} ({e}): check the state folder's "
            "permissions and free space"
        )
