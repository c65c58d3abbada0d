"""The PNG of bits per byte per language over rounds, from a run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt
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
    rounds = [r["round"] for r in evals]
    langs = sorted({lang for r in evals for lang in r["bpb"]})
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    for i, lang in enumerate(langs):
        pts = [(r["round"], r["bpb"][lang]) for r in evals if lang in r["bpb"]]
        ax.plot(*zip(*pts, strict=True), color=cmap(i % 20), linewidth=1, alpha=0.8, label=lang)
    ax.plot(rounds, [r["mean_bpb"] for r in evals], color="black", linewidth=2.5, label="mean")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=7, loc="upper right", frameon=False, bbox_to_anchor=(1.18, 1.0))
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
