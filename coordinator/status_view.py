"""The live view of ``step-coord status --watch``: round and ETA, nodes, the last evaluation per
language, privacy spent and alerts, drawn from ``status_report`` (cli.py) on every refresh."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from step_common.round_progress import format_duration


def round_times(rounds: list[dict[str, Any]], total: int, running: bool) -> dict[str, Any]:
    """Mean round time (the coordinator's own per-round wall time) and, while the run goes on,
    the ETA: that mean times the rounds left."""
    times = [float(r["wall_s"]) for r in rounds if "wall_s" in r]
    mean = sum(times) / len(times) if times else None
    done = rounds[-1]["round"] if rounds else 0
    eta = mean * (total - done) if running and mean is not None else None
    return {"mean_round_s": mean, "eta_s": eta}


def status_view(report: dict[str, Any], refreshed: str) -> RenderableType:
    """One screen; ``refreshed`` is the wall-clock time of this report."""
    parts: list[RenderableType] = [_headline(report, refreshed), _nodes(report)]
    if report["bpb"]:
        parts.append(_bpb_table(report))
    privacy = _privacy_table(report)
    if privacy is not None:
        parts.append(privacy)
    for alert in report["alerts"]:
        parts.append(Text(f"ALERT: {alert}", style="bold red"))
    for foreign in report["nodes"]["unenrolled"]:
        parts.append(Text(f"ALERT: node id {foreign['node_id']} is registered but not enrolled",
                          style="bold red"))  # fmt: skip
    parts.append(Text("Ctrl-C leaves the view (the run goes on)", style="dim"))
    return Group(*parts)


def _headline(report: dict[str, Any], refreshed: str) -> Text:
    mean, eta = report["mean_round_s"], report["eta_s"]
    timing = "" if mean is None else f"   mean round {format_duration(mean)}"
    if eta is not None:
        timing += f"   ETA {format_duration(eta)}"
    loss = "" if report["loss"] is None else f"   loss {report['loss']:.3f}"
    run = "no run yet" if report["run_id"] is None else f"run {report['run_id']}"
    return Text.assemble(
        (f"{run}: {report['status']}", "bold"),
        f"   round {report['round']}/{report['rounds']}{timing}{loss}   ({refreshed})",
        f"\nbytes up {report['bytes_up']:,}, down {report['bytes_down']:,}",
    )


def _nodes(report: dict[str, Any]) -> Text:
    n = report["nodes"]
    connected = ", ".join(n["connected"]) or "none"
    return Text(f"nodes: {len(n['connected'])} of {len(n['enrolled'])} enrolled connected "
                f"({connected}); {len(n['revoked'])} revoked")  # fmt: skip


def _bpb_table(report: dict[str, Any], across: int = 4) -> Table:
    """The languages ``across`` to a row (23 languages fit one screen), then the mean."""
    t = Table(title=f"bits per byte, evaluation of round {report['eval_round']}",
              title_justify="left")  # fmt: skip
    for _ in range(across):
        t.add_column("lang")
        t.add_column("bpb", justify="right")
    cells = [(lang, f"{value:.4f}") for lang, value in sorted(report["bpb"].items())]
    if report["mean_bpb"] is not None:
        cells.append(("mean", f"{report['mean_bpb']:.4f}"))
    for start in range(0, len(cells), across):
        row = [c for cell in cells[start : start + across] for c in cell]
        t.add_row(*row, *[""] * (2 * across - len(row)))
    return t


def _privacy_table(report: dict[str, Any]) -> Table | None:
    """Epsilon spent per institution (local DP) and by the coordinator's noise (central DP)."""
    if not report["epsilon"] and report["epsilon_central"] is None:
        return None
    t = Table(title="privacy spent", title_justify="left")
    t.add_column("who")
    t.add_column("epsilon", justify="right")
    for node, eps in sorted(report["epsilon"].items()):
        t.add_row(f"{node} (local DP)", f"{eps:.3f}")
    if report["epsilon_central"] is not None:
        t.add_row(f"central DP (delta {report['delta_central']:g}, per institution)",
                  f"{report['epsilon_central']:.3f}")  # fmt: skip
    return t
