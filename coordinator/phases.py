"""Where a round's time goes, phase by phase (the round record's ``phase_s``).

encode      the weights (or the change since the nodes' view) encoded for the wire
wait        sending, the nodes' training, the replies' transfer (node_wall_s: training)
check       each reply decoded and validated (keys, shapes, finite, norm, privacy report)
aggregate   the updates folded into the aggregate (and a robust rule's pass)
step        the outer optimizer's step
checkpoint  the round committed to disk (in metrics.jsonl: known once it is written)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(phase, time.monotonic() - start)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def timed(self, items: Iterable[T], phase: str) -> Iterator[T]:
        """``items``, with the time spent waiting for each one added to ``phase``."""
        it = iter(items)
        while True:
            with self(phase):
                item = next(it, None)
            if item is None:
                return
            yield item
            del item  # not held while the next one is awaited

    def record(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}
