"""bpb.png: the quick evaluations form the lines; the final one (all held-out text, other
text) is drawn apart, so its jump does not read as the model getting worse."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.collections import PathCollection

from step_sim.plot import bpb_figure, plot_bpb

EVALS = [
    {
        "kind": "eval",
        "round": 10,
        "bpb": {"el": 1.30, "bg": 1.70},
        "mean_bpb": 1.50,
        "final": False,
    },
    {
        "kind": "eval",
        "round": 20,
        "bpb": {"el": 1.15, "bg": 1.56},
        "mean_bpb": 1.355,
        "final": False,
    },
    {
        "kind": "eval",
        "round": 20,
        "bpb": {"el": 1.22, "bg": 1.59},
        "mean_bpb": 1.405,
        "final": True,
    },
]


def test_the_final_evaluation_is_not_joined_to_the_quick_ones(tmp_path: Path) -> None:
    fig = bpb_figure(EVALS, "t")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["el"].get_ydata()) == [1.30, 1.15]  # the quick series only
    assert list(lines["mean (quick evaluations)"].get_ydata()) == [1.50, (1.15 + 1.56) / 2]
    stars = [c for c in ax.collections if isinstance(c, PathCollection)
             and c.get_label() == "final: all held-out text"]  # fmt: skip
    assert len(stars) == 1 and stars[0].get_offsets().tolist() == [[20.0, (1.22 + 1.59) / 2]]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in EVALS))
    assert plot_bpb(metrics, tmp_path / "bpb.png", "t") == tmp_path / "bpb.png"
    assert (tmp_path / "bpb.png").stat().st_size > 10_000
