"""What rounding onto the secure-aggregation grid left out of a node's update, carried into its
next round (error feedback, as with the quantised encodings: trainer.py).

Kept per round like the inner state (state.py): ``<state_dir>/secure-residual/round-<N>.npy``
holds what round N left, and round N reads the newest left by a round before it, so a round
asked again (a retried or resumed secure round) starts from the same residual. Two are kept.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from step_common.fileio import atomic_write_bytes

FOLDER = "secure-residual"
KEEP = 2


class SecureResidual:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / FOLDER

    def _rounds(self) -> list[int]:
        if not self.root.is_dir():
            return []
        names = (p.stem for p in self.root.glob("round-*.npy"))
        return sorted(int(n[6:]) for n in names if n[6:].isdigit())

    def before(self, round_: int, length: int) -> np.ndarray:
        """(length,) float32: what the newest round before ``round_`` left (zeros if none, or
        if it was of another model size)."""
        earlier = [r for r in self._rounds() if r < round_]
        if earlier:
            try:
                held = np.load(self.root / f"round-{earlier[-1]}.npy", allow_pickle=False)
            except (OSError, ValueError):
                held = None  # unreadable: start over (a residual only delays what it holds)
            if held is not None and held.shape == (length,) and held.dtype == np.float32:
                return np.asarray(held, dtype=np.float32)
        return np.zeros(length, dtype=np.float32)

    def save(self, round_: int, residual: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, residual.astype(np.float32, copy=False), allow_pickle=False)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / f"round-{round_}.npy", buffer.getvalue())
        for old in self._rounds()[:-KEEP]:
            (self.root / f"round-{old}.npy").unlink(missing_ok=True)
