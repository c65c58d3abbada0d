"""Updates that must wait, held in memory up to a budget and on disk beyond it.

An update waits when it overtakes a node ahead of it in name order (coordinator/in_order.py)
or when a robust rule needs every update of the round at once. Kept encoded, each costs its
wire size (int8: a quarter of the fp32 model); with many nodes, or in the worst arrival order,
that is what would grow with the number of nodes. Beyond ``federation.update_memory_mib`` an
update's encoded arrays are written to ``<run>/.updates/`` (safetensors, from the tensors'
own memory) and read back one tensor at a time when the update is read: the same bytes, so the
same bits, and the coordinator's memory stays flat in the number of nodes whatever their order.
The folder is emptied when the round ends (and when a run starts: a crash may leave files).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from coordinator.encoded_update import EncodedUpdate
from coordinator.replies import TrainReply
from step_model.checkpoint import TensorFile

FOLDER = ".updates"


class SpilledArrays(TensorFile):
    """Encoded arrays written to ``path``, each read from disk when asked for."""

    def __init__(self, path: Path, arrays: Mapping[str, torch.Tensor]) -> None:
        save_file({k: v.contiguous() for k, v in arrays.items()}, str(path))
        super().__init__(path, {k: k for k in arrays})


class Spill:
    """Where a round's waiting updates go: memory while ``budget_bytes`` allows, then disk."""

    def __init__(self, run_dir: Path, budget_bytes: int) -> None:
        self.folder = run_dir / FOLDER
        self.budget = budget_bytes
        self.in_memory = 0
        """Bytes of the updates that wait in memory this round (each counted once)."""
        self.held: set[int] = set()
        self.written = 0
        """Updates written to disk this round (reported by bench/coordinator_memory.py)."""

    def park(self, reply: TrainReply) -> TrainReply:
        """The reply, its update moved to disk if holding it would exceed the budget."""
        delta = reply.delta
        if not isinstance(delta, EncodedUpdate) or isinstance(delta.arrays, SpilledArrays):
            return reply  # not encoded (tests), or on disk already
        if reply.node_id in self.held:
            return reply  # waited for its turn, now kept by a robust rule: counted already
        size = sum(t.numel() * t.element_size() for t in delta.arrays.values())
        if self.in_memory + size <= self.budget:
            self.in_memory += size
            self.held.add(reply.node_id)
            return reply
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{reply.node_id}.safetensors"
        self.written += 1
        return replace(reply, delta=delta.with_arrays(SpilledArrays(path, delta.arrays)))

    def clear(self) -> None:
        """The round is over: nothing waits any more."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.in_memory = self.written = 0
        self.held = set()
