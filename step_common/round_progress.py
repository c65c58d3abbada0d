"""Progress over a run's rounds, for a person to follow: a live bar with the ETA on a terminal,
one plain line per round when the output goes to a file or a pipe (a bar redrawn there would
be a wall of control codes; a log wants lines).

The ETA is the mean time of the rounds seen by this process times the rounds left: the first
rounds carry the start-up (a simulation's Ray workers, a node's tokenizing), so it starts
pessimistic and settles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def format_duration(seconds: float) -> str:
    """``42 s``, ``3m 05s``, ``2h 07m``, ``3d 04h``: the two units that matter."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


class RoundProgress:
    """``with RoundProgress(console, total) as p: ... p.advance(round_, "loss 2.31")``."""

    def __init__(
        self,
        console: Console,
        total: int,
        done: int = 0,
        title: str = "rounds",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.total, self.title, self.clock = console, total, title, clock
        self.first = self.done = done
        """Rounds done before this process (a resumed run): not part of the mean round time."""
        self.started = clock()
        self.bar: Progress | None = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=console,
            )
            self.task = self.bar.add_task(title, total=total, completed=done, status="", eta="-")

    def __enter__(self) -> RoundProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.stop()

    def eta_s(self) -> float | None:
        """Seconds left at the mean round time so far; None before a round has finished."""
        finished = self.done - self.first
        if finished <= 0:
            return None
        return (self.clock() - self.started) / finished * max(0, self.total - self.done)

    def eta(self) -> str:
        left = self.eta_s()
        return "-" if left is None else format_duration(left)

    def advance(self, round_: int, status: str, line: str | None = None) -> None:
        """Round ``round_`` is done. ``status`` (short) goes into the bar; ``line`` (the full
        account of the round, if any) is printed above it. Without a terminal: one line."""
        self.done = max(self.done, round_)
        if self.bar is None:
            eta = f"ETA {self.eta()}"
            text = (f"{line}; {round_}/{self.total} rounds, {eta}" if line
                    else f"round {round_}/{self.total}: {status}; {eta}")  # fmt: skip
            self.console.print(text, markup=False)
            return
        if line:
            self.console.print(line, markup=False)
        self.bar.update(self.task, completed=self.done, status=status, eta=self.eta())

    def update(self, status: str) -> None:
        """New status between rounds (an evaluation came in); no line of its own."""
        if self.bar is not None:
            self.bar.update(self.task, status=status)
