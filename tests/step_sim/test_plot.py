"""bpb.png: the quick evaluations form the lines; the final one (all held-out text, other
text) is drawn apart, so its jump does not read as the model getting worse."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.collections import PathCollection

from step_sim.plot import (
    bpb_figure,
    comparison_figure,
    plot_bpb,
    plot_comparison,
    read_evals,
    with_steps,
)
from tests.local_federation import write_sim_config

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


def test_the_comparison_draws_both_runs_and_the_final_ratio_per_language(tmp_path: Path) -> None:
    fed = [
        {**r, "bpb": {k: v * 1.1 for k, v in r["bpb"].items()}, "mean_bpb": r["mean_bpb"] * 1.1}
        for r in EVALS
    ]
    fig = comparison_figure({"centralized": EVALS, "federated": fed}, "t")
    curves, ratios = fig.axes
    lines = {line.get_label(): line for line in curves.get_lines()}
    assert list(lines["centralized (quick evaluations)"].get_ydata()) == [1.50, 1.355]
    assert list(lines["federated (quick evaluations)"].get_ydata()) == [1.50 * 1.1, 1.355 * 1.1]
    stars = [c.get_label() for c in curves.collections if isinstance(c, PathCollection)]
    assert stars == ["centralized: final 1.4050", "federated: final 1.5455"]
    bars = [b.get_width() for b in ratios.patches]
    assert len(bars) == 2 and all(abs(b - 1.1) < 1e-12 for b in bars)  # bg, el: final/final
    assert [t.get_text() for t in ratios.get_yticklabels()] == ["bg", "el"]
    runs = {}
    for label, recs in (("centralized", EVALS), ("federated", fed)):
        runs[label] = tmp_path / f"{label}.jsonl"
        runs[label].write_text("".join(json.dumps(r) + "\n" for r in recs))
    png = plot_comparison(runs, tmp_path / "fvc.png", "t")
    assert png.stat().st_size > 10_000


def test_a_reused_twin_lines_up_by_optimizer_steps_not_rounds(tmp_path: Path) -> None:
    """A twin of 2 rounds of H 10 stands for a federation of 4 rounds of H 5: the plot puts
    both runs' evaluations at the steps done, read from each run folder's sim.yaml."""
    runs = {}
    for label, schedule in (("centralized", dict(rounds=2, inner_steps=10)),
                            ("federated", dict(rounds=4, early_rounds=2, early_inner_steps=2,
                                               inner_steps=8))):  # fmt: skip
        folder = tmp_path / label
        folder.mkdir()
        write_sim_config(folder / "sim.yaml", tmp_path, [{"name": "a", "languages": {"el": 1}}],
                         **schedule)  # fmt: skip
        rounds = [1, 2, 2] if label == "centralized" else [2, 4, 4]
        recs = [{**r, "round": n} for r, n in zip(EVALS, rounds, strict=True)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        runs[label] = folder / "metrics.jsonl"
    steps = {label: [r["step"] for r in with_steps(read_evals(path), path.parent / "sim.yaml")]
             for label, path in runs.items()}  # fmt: skip
    assert steps == {"centralized": [10, 20, 20], "federated": [4, 20, 20]}
    assert with_steps(EVALS, tmp_path / "no-such.yaml") == EVALS  # no run folder: rounds stay
    plot_comparison(runs, tmp_path / "fvc.png", "t")
    fig = comparison_figure({label: with_steps(read_evals(p), p.parent / "sim.yaml")
                             for label, p in runs.items()}, "t")  # fmt: skip
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["federated (quick evaluations)"].get_xdata()) == [4, 20]
    assert fig.axes[0].get_xlabel() == "optimizer steps"
