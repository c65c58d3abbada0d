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


def plot_bpb(metrics: Path, out: Path, title: str) -> Path | None:
    """One line per language plus the mean (bold); None when there is no evaluation yet."""
    evals = [
        r
        for r in (json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x)
        if r.get("kind") == "eval" and r.get("bpb")
    ]
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
