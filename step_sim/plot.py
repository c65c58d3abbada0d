"""The PNG of bits per byte per language over rounds, from a run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from coordinator.config import federation_from_dict
from step_common.fileio import read_yaml


def plot_bpb(metrics: Path, out: Path, title: str) -> Path | None:
    """One line per language plus the mean (bold); None when there is no evaluation yet."""
    evals = read_evals(metrics)
    if not evals:
        return None
    fig = bpb_figure(evals, title)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def bpb_figure(evals: list[dict[str, Any]], title: str) -> Figure:
    """Lines join the quick evaluations (the same first ``eval_max_tokens`` of each language
    every time); the final evaluation reads all held-out text, other text, so it is drawn apart
    (dots, a star for the mean) instead of continuing the lines: a jump there is not the model
    getting worse."""
    quick = [r for r in evals if not r.get("final")]
    final = [r for r in evals if r.get("final")]
    langs = sorted({lang for r in evals for lang in r["bpb"]})
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    for i, lang in enumerate(langs):
        color = cmap(i % 20)
        pts = [(r["round"], r["bpb"][lang]) for r in quick if lang in r["bpb"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=color, linewidth=1, alpha=0.8, label=lang)
        ends = [r for r in final if lang in r["bpb"]]
        if ends:
            x, y = [r["round"] for r in ends], [r["bpb"][lang] for r in ends]
            ax.scatter(x, y, color=color, s=14, marker="o", label=None if pts else lang)
    if quick:
        ax.plot([r["round"] for r in quick], [r["mean_bpb"] for r in quick], color="black",
                linewidth=2.5, label="mean (quick evaluations)")  # fmt: skip
    if final:
        ax.scatter([r["round"] for r in final], [r["mean_bpb"] for r in final], color="black",
                   marker="*", s=160, zorder=3, label="final: all held-out text")  # fmt: skip
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=7, loc="upper right", frameon=False, bbox_to_anchor=(1.18, 1.0))
    fig.tight_layout()
    return fig


def read_evals(metrics: Path) -> list[dict[str, Any]]:
    """The evaluation records of a run's metrics.jsonl (those with a bpb per language)."""
    lines = metrics.read_text(encoding="utf-8").splitlines()
    return [
        r for r in (json.loads(x) for x in lines if x) if r.get("kind") == "eval" and r.get("bpb")
    ]


def plot_comparison(runs: dict[str, Path], out: Path, title: str) -> Path:
    """``runs``: label -> metrics.jsonl, the baseline first; one PNG (comparison_figure)."""
    evals = {label: with_steps(read_evals(path), path.parent / "sim.yaml")
             for label, path in runs.items()}  # fmt: skip
    fig = comparison_figure(evals, title)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def with_steps(evals: list[dict[str, Any]], sim_yaml: Path) -> list[dict[str, Any]]:
    """Each record with ``step``, the optimizer steps done when it was taken (after ``round``
    rounds of that run's schedule), where the run folder has its sim.yaml: a centralized twin
    reused for a federation that cuts the same steps into other rounds then lines up with it."""
    if not sim_yaml.is_file():
        return evals
    doc = read_yaml(sim_yaml, "not a step-sim run folder")
    fed = federation_from_dict(doc["federation"], str(sim_yaml))
    return [{**r, "step": fed.step_offset(r["round"] + 1)} for r in evals]


def comparison_figure(evals: dict[str, list[dict[str, Any]]], title: str) -> Figure:
    """Federated against centralized. Left: the mean bpb of each run at every evaluation
    (quick ones joined, the final one apart, as in bpb_figure). Right: per language, the final
    bpb of each run over the first run's (the baseline, e.g. centralized)."""
    fig, (curves, ratios) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=110,
                                         gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    x = "step" if all("step" in r for recs in evals.values() for r in recs) else "round"
    for i, (label, recs) in enumerate(evals.items()):
        color = plt.get_cmap("tab10")(i)
        quick = [r for r in recs if not r.get("final")]
        final = [r for r in recs if r.get("final")]
        curves.plot([r[x] for r in quick], [r["mean_bpb"] for r in quick], color=color,
                    linewidth=2, marker=".", label=f"{label} (quick evaluations)")  # fmt: skip
        if final:
            curves.scatter([r[x] for r in final], [r["mean_bpb"] for r in final],
                           color=color, marker="*", s=160, zorder=3,
                           label=f"{label}: final {final[-1]['mean_bpb']:.4f}")  # fmt: skip
    curves.set_xlabel(
        "optimizer steps"
        if x == "step"
        else "round (the centralized run: the same number of optimizer steps)"
    )
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_ylabel("mean held-out bits per byte")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8, frameon=False)
    _final_ratios(ratios, evals)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _final_ratios(ax: Any, evals: dict[str, list[dict[str, Any]]]) -> None:
    """Horizontal bars: each run's final bpb per language over the baseline's (1.0 = equal)."""
    labels = list(evals)
    last = {label: recs[-1]["bpb"] for label, recs in evals.items() if recs}
    base = labels[0]
    if base not in last:
        return
    langs = sorted(last[base])
    height = 0.8 / max(1, len(labels) - 1)
    for i, label in enumerate(labels[1:]):
        ys = [j + i * height for j in range(len(langs))]
        xs = [last[label].get(lang, float("nan")) / last[base][lang] for lang in langs]
        ax.barh(ys, xs, height=height, color=plt.get_cmap("tab10")(i + 1), label=label)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(langs)), langs, fontsize=7)
    ax.invert_yaxis()
    widths = [w for b in ax.patches if (w := b.get_width()) == w]  # w != w: a missing language
    lo = min([0.98, *widths])
    ax.set_xlim(lo - 0.01, None)
    ax.set_xlabel(f"final bpb / {base}'s")
    ax.legend(fontsize=8, frameon=False)
