"""Round progress: a bar with the ETA on a terminal, plain lines otherwise; the ETA is the mean
round time of this process times the rounds left."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from step_common.round_progress import RoundProgress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (42, "42 s"), (185, "3m 05s"), (7620, "2h 07m"), (273600, "3d 04h")],
)
def test_durations_read_as_two_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_without_a_terminal_each_round_is_one_line_with_its_eta() -> None:
    buffer, clock = io.StringIO(), Clock()
    console = Console(file=buffer, width=200)
    with RoundProgress(console, total=4, clock=clock) as progress:
        clock.now += 10
        progress.advance(1, "8 nodes, loss 3.100")
        clock.now += 30  # rounds 1-2 took 40 s: 20 s each, 2 left
        progress.advance(2, "loss 2.900", "round 2: 8 nodes, loss 2.900, 30.0 s")
    assert buffer.getvalue().splitlines() == [
        "round 1/4: 8 nodes, loss 3.100; ETA 30 s",
        "round 2: 8 nodes, loss 2.900, 30.0 s; 2/4 rounds, ETA 40 s",
    ]


def test_a_resumed_run_times_only_its_own_rounds() -> None:
    buffer, clock = io.StringIO(), Clock()
    with RoundProgress(Console(file=buffer, width=200), total=10, done=6, clock=clock) as p:
        assert p.eta() == "-"  # no round finished in this process yet
        clock.now += 50
        p.advance(7, "loss 2.000")
    assert buffer.getvalue().strip() == "round 7/10: loss 2.000; ETA 2m 30s"


def test_on_a_terminal_a_bar_shows_the_count_status_and_eta() -> None:
    buffer, clock = io.StringIO(), Clock()
    console = Console(file=buffer, width=160, force_terminal=True, highlight=False)
    with RoundProgress(console, total=5, clock=clock) as progress:
        clock.now += 12
        progress.advance(1, "loss 3.250", "round 1: 3 nodes, loss 3.250, 12.0 s")
        progress.update("bpb 2.871")
    text = buffer.getvalue()
    assert "round 1: 3 nodes, loss 3.250, 12.0 s" in text  # the line, above the bar
    assert "1/5" in text and "ETA 48 s" in text and "bpb 2.871" in text
    assert "round 1/5:" not in text  # no plain line on a terminal
