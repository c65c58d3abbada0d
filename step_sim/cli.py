"""``step-sim``: the whole federation on one machine, or its centralized baseline.

    step-sim --config examples/sim-eu8.yaml [--rounds N] [--preset P] [--out DIR]
             [--centralized] [--resume] [--json]

The federated mode runs the real ServerApp (coordinator/) and ClientApp (node/) on Flower's
simulation engine (a simulation SuperLink + Ray, see flower_runner.py). ``--centralized`` trains
the same model on the pooled data of the same institutions (centralized.py). Both write into the
run folder: ``metrics.jsonl``, ``summary.json``, checkpoints, ``bpb.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from step_common.cli_common import (
    command_line,
    console_for,
    emit_json,
    table,
    user_errors,
    version_callback,
)
from step_common.errors import StepError
from step_common.fileio import atomic_write_text
from step_common.round_progress import RoundProgress
from step_fed import protocol as P
from step_model.checkpoint import resolve_checkpoint, verify_checkpoint
from step_model.corpus import project_root
from step_model.evaluate import mean_bpb
from step_model.tokenizer import resolve_tokenizer
from step_sim.config import SimConfig, load_sim_config
from step_sim.node_files import write_node_files
from step_sim.plot import plot_bpb
from step_sim.worker_groups import worker_groups

app = command_line(__doc__, "step-sim", commands=False)


def _resolve_tokenizer(sim: SimConfig, out: Path, console: Console) -> SimConfig:
    """Train (or reuse) a ``bpe:N`` tokenizer into the run folder and point the config at it."""
    spec = sim.federation.tokenizer
    if not spec.startswith("bpe:"):
        return sim
    if not (out / f"tokenizer-bpe{spec[4:]}.json").is_file():
        console.print(f"training the {spec} tokenizer on a language-balanced sample of the corpus")
    resolve_tokenizer(spec, sim.corpus, out, show_progress=console.is_terminal)
    return sim.with_overrides(tokenizer=str(out / f"tokenizer-bpe{spec[4:]}.json"))


def _prepare_run_folder(out: Path, resume: bool) -> None:
    if resume:
        if not (out / "sim.yaml").is_file():
            raise StepError(f"--resume: {out} holds no step-sim run (no sim.yaml): drop --resume")
        return
    if out.exists() and any(out.iterdir()):
        raise StepError(
            f"run folder {out} is not empty: pass --resume to continue it, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


START_S = 900.0
"""Time a Flower run may take to start before its first round: SuperLink, Ray's workers, the
nodes' data."""


def flower_time_limit(sim: SimConfig, rounds_done: int) -> float:
    """How long step-sim lets the Flower run go before stopping it as stuck: each round still to
    come and the final evaluation get ``round_timeout_s`` (the coordinator's wait for a node),
    once more per resend to a node that dropped out. A bound on a stuck run, far above a healthy
    run's pace (secure aggregation's extra exchanges in a round are short ones), where a fixed
    hour stopped healthy runs (``--slow`` on 2 cores took 60 minutes for its first 263 rounds)."""
    from coordinator.delivery import RESENDS  # Flower's import, only when a run goes to Flower

    fed = sim.federation
    messages = fed.rounds - rounds_done + 1
    return START_S + messages * (1 + RESENDS) * fed.round_timeout_s


class MetricsFollower:
    """Reads the records a run appends to metrics.jsonl, as they arrive."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def new_records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("r", encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]  # a line still being written waits
        self.offset += len(complete.encode("utf-8"))
        return [json.loads(x) for x in complete.splitlines() if x.strip()]


def _show(record: dict[str, Any], progress: RoundProgress, console: Console) -> None:
    if record["kind"] == "round":
        for node, reason in record.get("rejected", {}).items():
            console.print(f"[yellow]round {record['round']}: {node} rejected: {reason}[/]")
        for node in record.get("missing", []):
            console.print(f"[yellow]round {record['round']}: {node} did not reply in time[/]")
        loss = "-" if record["loss"] is None else f"{record['loss']:.3f}"  # None: all DP nodes
        progress.advance(record["round"], f"{record['nodes']} nodes, loss {loss}")
    elif record["kind"] == "eval" and record.get("mean_bpb") is not None:
        console.print(f"round {record['round']}: mean held-out bpb {record['mean_bpb']:.4f}")
        progress.update(f"bpb {record['mean_bpb']:.3f}")


def _run_federated(sim: SimConfig, out: Path, resume: bool, console: Console) -> dict[str, Any]:
    from step_sim.flower_runner import SimulationSpec, run_simulation_app

    follower = MetricsFollower(out / "metrics.jsonl")
    earlier = follower.new_records()  # a resumed run's earlier rounds are not news
    done = max((int(r["round"]) for r in earlier if r.get("kind") == "round"), default=0)
    node_files = write_node_files(sim, out)
    spec = SimulationSpec(
        app_dir=project_root(),
        run_dir=out / "flower",
        num_supernodes=len(sim.names),
        run_config={
            P.RUN_CONFIG_FILE: str(out / "sim.yaml"),
            P.RUN_DIR: str(out),
            P.RUN_RESUME: resume,
            P.RUN_NODE_FILES: str(node_files),
        },
        cpus_per_client=1,
        timeout_s=flower_time_limit(sim, done),
    )
    progress = RoundProgress(console, sim.federation.rounds, done)
    with worker_groups(node_files, out) as grouped, progress:
        for name in grouped:
            console.print(f"{name} trains on torchrun workers (logs/workers-{name}.log)")

        def poll() -> None:
            for record in follower.new_records():
                _show(record, progress, console)

        run_simulation_app(spec, on_poll=poll)
        poll()
    return dict(json.loads((out / "summary.json").read_text(encoding="utf-8")))


def _run_centralized(sim: SimConfig, out: Path, resume: bool, console: Console) -> dict[str, Any]:
    from step_sim.centralized import run_centralized

    with RoundProgress(console, sim.federation.rounds, title="rounds (centralized)") as progress:
        return run_centralized(sim, out, lambda r: _show(r, progress, console), resume)


@app.command()
@user_errors
def main(
    config: Annotated[Path, typer.Option(help="Simulation YAML (see examples/sim-eu8.yaml).")],
    rounds: Annotated[int | None, typer.Option(help="Override federation.rounds.")] = None,
    preset: Annotated[str | None, typer.Option(help="Override federation.preset.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: runs/<config>-<time>).")
    ] = None,
    centralized: Annotated[
        bool,
        typer.Option(
            "--centralized", help="Train the pooled-data baseline instead of the federation."
        ),
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start from this checkpoint's weights (both modes; a warm start)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Last line: a JSON summary.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=version_callback("step-sim"),
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Run the federation of a simulation config on this machine (or its centralized baseline)."""
    t0 = time.monotonic()
    console = console_for(json_out)
    mode = "centralized" if centralized else "federated"
    _check_resume(out, resume=resume)
    out = out or Path("runs") / f"{config.stem}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    sim = _load_sim(config, rounds=rounds, preset=preset, init_from=init_from)
    sim, out = _start_run_folder(sim, out, resume=resume, console=console)
    console.print(_headline(sim, out, mode))
    summary = _train(sim, out, centralized=centralized, resume=resume, console=console)
    summary["wall_s"] = time.monotonic() - t0
    _report(summary, out=out, title=f"{config.stem}: {mode}", console=console, json_out=json_out)


def _check_resume(out: Path | None, *, resume: bool) -> None:
    """Refuse a --resume that has nothing to continue."""
    if resume and out is None:
        raise StepError("--resume needs --out: the run folder to continue")


def _load_sim(
    config: Path, *, rounds: int | None, preset: str | None, init_from: Path | None
) -> SimConfig:
    """The simulation config with the command line's overrides applied."""
    init = str(init_from.resolve()) if init_from else None
    if init_from:  # a damaged checkpoint must stop the run before anything is written
        verify_checkpoint(resolve_checkpoint(init_from))
    return load_sim_config(config).with_overrides(rounds=rounds, preset=preset, init_from=init)


def _start_run_folder(
    sim: SimConfig, out: Path, *, resume: bool, console: Console
) -> tuple[SimConfig, Path]:
    """Make (or reopen) the run folder, put the tokenizer there and, for a new run, sim.yaml.

    Returns the config pointing at that tokenizer and the folder's absolute path.
    """
    _prepare_run_folder(out, resume)
    out = out.resolve()
    sim = _resolve_tokenizer(sim, out, console)
    if not resume:  # a resumed run keeps the sim.yaml it was started with
        atomic_write_text(out / "sim.yaml", yaml.safe_dump(sim.to_yaml_dict(), sort_keys=False))
    return sim, out


def _headline(sim: SimConfig, out: Path, mode: str) -> str:
    """One line on what is about to run: institutions, languages, optimizer, rounds, folder."""
    fed = sim.federation
    early = min(fed.early_rounds, fed.rounds)
    schedule = f"{fed.rounds} rounds x {fed.inner_steps} steps"
    if early:
        schedule = (
            f"{fed.rounds} rounds ({early} x {fed.early_inner_steps} steps, then "
            f"{fed.rounds - early} x {fed.inner_steps})"
        )
    optimizer = "AdamW" if mode == "centralized" else fed.strategy
    return (
        f"{mode}: {len(sim.names)} institutions, {len(sim.languages())} languages, "
        f"{optimizer}, {schedule}, preset {fed.preset}; run folder {out}"
    )


def _train(
    sim: SimConfig, out: Path, *, centralized: bool, resume: bool, console: Console
) -> dict[str, Any]:
    """Run the federation, or the centralized baseline; return the run's summary."""
    if centralized:
        return _run_centralized(sim, out, resume, console)
    return _run_federated(sim, out, resume, console)


def _report(
    summary: dict[str, Any], *, out: Path, title: str, console: Console, json_out: bool
) -> None:
    """Print the results: held-out bpb, traffic, privacy, the plot; with --json, the summary."""
    plot = plot_bpb(out / "metrics.jsonl", out / "bpb.png", title)
    _print_bpb(summary, console)
    console.print(
        f"{summary['tokens']:,} training tokens; up {summary['bytes_up'] / 1e6:,.1f} MB, "
        f"down {summary['bytes_down'] / 1e6:,.1f} MB; {summary['wall_s']:.0f} s"
    )
    if summary.get("mode") == "federated" and summary.get("comm_ratio"):
        console.print(f"communication: {summary['comm_ratio']:.1f}x less than synchronous data "
                      "parallelism would all-reduce for the same steps (comm_ratio)")  # fmt: skip
    _print_privacy(summary, console)
    if plot:
        console.print(f"plot: {plot}")
    if json_out:
        emit_json({**summary, "run_dir": str(out), "plot": str(plot) if plot else None})


def _print_bpb(summary: dict[str, Any], console: Console) -> None:
    """The held-out bits per byte per language and their mean (nothing before an evaluation)."""
    bpb = summary.get("bpb") or {}
    rows = [(lang, f"{v:.4f}") for lang, v in sorted(bpb.items())]
    if bpb:
        rows.append(("mean", f"{mean_bpb(bpb):.4f}"))
        console.print(table("held-out bits per byte", ["lang", "bpb"], rows))


def _print_privacy(summary: dict[str, Any], console: Console) -> None:
    for node, eps in sorted(summary.get("epsilon", {}).items()):
        console.print(f"local DP: {node} spent epsilon {eps:.3f} ({summary['privacy_unit']})")
    if "epsilon_central" in summary:
        console.print(f"central DP: epsilon {summary['epsilon_central']:.3f} "
                      f"(delta {summary['delta_central']:g}, per institution)")  # fmt: skip


def main_entry() -> None:
    app()
