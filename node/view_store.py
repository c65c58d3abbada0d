"""The global weights as this node last received them, for the intN-delta broadcast.

With ``broadcast_encoding: int8-delta`` (or int4-delta, int2-delta) a round brings only the
change since the weights the node already holds (coordinator/broadcast.py). The node keeps
those weights here, in ``<state_dir>/broadcast/`` (safetensors + id + SHA256SUMS, written
atomically), under the content id the coordinator gave them, with the run's tokenizer (a change
comes without it); a change for another base is answered with ``ERR_STALE_VIEW`` and the
coordinator sends the weights (and the tokenizer) whole instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_text, remove_stale_temps
from step_model.checkpoint import read_tree, verify_checkpoint, write_sums, write_tree

Weights = dict[str, torch.Tensor]


class StaleView(StepError):
    """The change in a message applies to weights this node does not hold."""


class ViewStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "broadcast"

    def load(self) -> tuple[str, Weights, str] | None:
        """(id, weights, tokenizer JSON) as last kept, or None. A damaged copy counts as none:
        the coordinator then sends the weights (and the tokenizer) whole, which repairs it."""
        if not (self.dir / "view.json").is_file():
            return None
        try:
            verify_checkpoint(self.dir, required=("view.json",))
            meta = json.loads((self.dir / "view.json").read_text(encoding="utf-8"))
            tokenizer = (self.dir / "tokenizer.json").read_text(encoding="utf-8")
            return str(meta["id"]), read_tree(self.dir, "weights"), tokenizer
        except (StepError, OSError, ValueError, KeyError):
            return None

    def save(self, view: str, weights: Weights, tokenizer: str) -> None:
        """Replace the kept copy. A crash in between leaves none (or a temporary folder that
        the next save removes): the coordinator then sends the weights whole."""
        remove_stale_temps(self.dir.parent)
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            with atomic_directory(self.dir) as tmp:
                write_tree(tmp, "weights", weights)
                atomic_write_text(tmp / "tokenizer.json", tokenizer)
                atomic_write_text(tmp / "view.json", json.dumps({"id": view}))
                write_sums(tmp)
        except OSError as e:
            raise StepError(
                f"cannot keep the received weights in {self.dir} ({e}): check the state "
                "folder's permissions and free space"
            ) from None
