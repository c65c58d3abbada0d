"""A bar over bytes written, for the steps that write gigabytes (a 7b export: 28 GB of fp32
shards); on a terminal only, where a person waits on it (a log gets the step's result line)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

BytesDone = Callable[[int, int], None]
"""``(bytes written so far, bytes in all)``."""


@contextmanager
def byte_progress(console: Console, description: str) -> Iterator[BytesDone]:
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
