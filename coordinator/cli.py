"""``step-coord``: the coordinator admin's command line.

    step-coord init DIR [--host NAME ...]     federation folder, CA and server certificate
    step-coord enroll NAME --public-key FILE  allow an institution in
    step-coord nodes [--json]                 enrolled, revoked and connected institutions
    step-coord revoke NAME                    shut an institution out (next connection attempt)
    step-coord start [--config FILE] [--resume]  SuperLink + the training run, in the foreground
    step-coord status [--json]                run state, round, nodes, last metrics, bytes
    step-coord stop                           stop a running `step-coord start`

Every command but init works on the federation folder given by --dir (default: the current
folder). See deployment.py for the folder's layout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from coordinator.config import FederationConfig, load_federation_config
from coordinator.deployment import (
    CONFIG_TEMPLATE,
    CoordinatorSettings,
    FederationFolder,
    ProcessState,
    coordinator_settings,
    read_process_state,
)
from coordinator.records import latest_epsilons, read_records
from coordinator.registry import Registry
from coordinator.superlink import (
    CONNECTION,
    FlowerAdmin,
    executable,
    flower_env,
    run_config,
    start_superlink,
    sync_registry,
    write_app,
)
from coordinator.tls import create_tls
from step_model.cli_common import console_for, emit_json, table, user_errors
from step_model.errors import StepError
from step_model.fileio import atomic_write_text
from step_model.flwr_cli import log_tail
from step_model.identity import read_public_key
from step_model.processes import ChildProcesses, new_marker, watchdog
from step_model.tokenizer import load_tokenizer

app = typer.Typer(help=__doc__, add_completion=False, no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="The federation folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Last line of output: one JSON object.")]
POLL_S = 2.0


@app.command()
@user_errors
def init(
    folder: Annotated[Path, typer.Argument(help="Federation folder to create.")],
    host: Annotated[
        list[str] | None,
        typer.Option(help="Host name or IP nodes dial (repeat); loopback is always included."),
    ] = None,
    preset: Annotated[str, typer.Option(help="Model preset.")] = "debug",
    rounds: Annotated[int, typer.Option(help="Outer rounds.")] = 20,
    inner_steps: Annotated[int, typer.Option(help="H: local steps per round.")] = 50,
    min_nodes: Annotated[int, typer.Option(help="Replies needed to commit a round.")] = 2,
    fleet_address: Annotated[str, typer.Option(help="Where nodes connect.")] = "0.0.0.0:9092",
    control_port: Annotated[int, typer.Option(help="Loopback Control API port.")] = 9093,
) -> None:
    """Create a federation folder: coordinator.yaml, CA and server certificate, empty registry."""
    fed = FederationFolder(folder)
    if fed.config.exists() or (fed.tls / "ca.key").exists():
        raise StepError(
            f"{folder} already holds a federation: use it, or choose a new folder (re-running "
            "init would replace the CA that every node trusts)"
        )
    CoordinatorSettings(fleet_address, control_port)  # validate before writing anything
    text = CONFIG_TEMPLATE.format(
        name=folder.resolve().name,
        preset=preset,
        rounds=rounds,
        inner_steps=inner_steps,
        min_nodes=min_nodes,
        fleet_address=fleet_address,
        control_port=control_port,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tls = create_tls(fed.tls, folder.resolve().name, list(host or []))
    Registry(folder).save()
    atomic_write_text(fed.config, text)
    load_federation_config(fed.config)  # the template must load
    out = console_for(False)
    out.print(f"federation folder {folder}: coordinator.yaml, registry.json, tls/")
    out.print(f"give node operators the CA certificate: {tls.ca_cert}")
    out.print(f"nodes connect to {fleet_address} (a host named in --host, port as given)")
    out.print("next: `step-coord enroll NAME --public-key node.pub`, then `step-coord start`")


@app.command()
@user_errors
def enroll(
    name: Annotated[str, typer.Argument(help="The institution's name.")],
    public_key: Annotated[Path, typer.Option(help="The node.pub the operator sent.")],
    folder: DirOpt = Path("."),
) -> None:
    """Allow an institution in (takes effect at once on a running coordinator)."""
    fed = FederationFolder(folder).require()
    registry = Registry(folder)
    entry = registry.enroll(name, read_public_key(public_key))
    out = console_for(False)
    out.print(f"enrolled {name}: {entry.fingerprint}")
    out.print("compare this fingerprint with the one the operator sees in `step-node init`")
    _apply_if_running(fed, registry)


@app.command()
@user_errors
def revoke(
    name: Annotated[str, typer.Argument(help="The institution's name.")],
    folder: DirOpt = Path("."),
) -> None:
    """Shut an institution out; it is refused from its next connection attempt on."""
    fed = FederationFolder(folder).require()
    registry = Registry(folder)
    registry.revoke(name)
    console_for(False).print(f"revoked {name}")
    _apply_if_running(fed, registry)


def _apply_if_running(fed: FederationFolder, registry: Registry) -> None:
    state = read_process_state(fed)
    if state is None or not state.alive:
        console_for(False).print("takes effect when `step-coord start` runs")
        return
    admin = FlowerAdmin(fed, coordinator_settings(fed.config))
    for change in sync_registry(admin, registry):
        console_for(False).print(f"coordinator: {change}")


@app.command()
@user_errors
def nodes(folder: DirOpt = Path("."), json_out: JsonOpt = False) -> None:
    """Enrolled and revoked institutions, and which are connected now."""
    fed = FederationFolder(folder).require()
    registry = Registry(folder)
    online = _online_names(fed, registry)
    rows = []
    for e in registry.as_json():
        e["connected"] = e["name"] in online
        rows.append(e)
    if json_out:
        emit_json({"nodes": rows})
        return
    out = console_for(False)
    out.print(
        table(
            "institutions",
            ["name", "status", "connected", "fingerprint"],
            [
                [r["name"], r["status"], "yes" if r["connected"] else "no", r["fingerprint"]]
                for r in rows
            ],
        )
    )


def _online_names(fed: FederationFolder, registry: Registry) -> list[str]:
    """Names of the nodes connected now ([] when the coordinator is not running)."""
    state = read_process_state(fed)
    if state is None or not state.alive:
        return []
    try:
        listed = FlowerAdmin(fed, coordinator_settings(fed.config)).list_nodes()
    except StepError:
        return []
    return sorted(
        registry.name_of(int(n["node-id"])) or f"node {n['node-id']}"
        for n in listed
        if n.get("status") == "online"
    )


class Stop(Exception):
    """SIGTERM (step-coord stop) or Ctrl-C."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop()


@app.command()
@user_errors
def start(
    folder: DirOpt = Path("."),
    config: Annotated[
        Path | None, typer.Option(help="coordinator.yaml to use (default: the folder's).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
) -> None:
    """Start the SuperLink (TLS, node authentication) and run the training to its end."""
    fed = FederationFolder(folder).require()
    config_path = (config or fed.config).resolve()
    fed_cfg = load_federation_config(config_path)  # fail before anything starts
    _check_files(fed_cfg, config_path)
    settings = coordinator_settings(config_path)
    previous = read_process_state(fed)
    if previous is not None and previous.alive:
        raise StepError(
            f"a coordinator is already running for {folder} (pid {previous.pid}): "
            "`step-coord stop` it first"
        )
    if not resume and (fed.run / "LATEST").exists():
        raise StepError(
            f"{fed.run} holds an earlier run: `step-coord start --resume` continues it; to "
            "start over, move that folder away"
        )
    out = console_for(False)
    state = ProcessState(os.getpid(), "starting", time.time(), settings.fleet_address,
                         settings.control_port)  # fmt: skip
    state.save(fed)
    fed.logs.mkdir(parents=True, exist_ok=True)
    log_path = fed.logs / "superlink.log"
    old_handler = signal.signal(signal.SIGTERM, _raise_stop)
    marker = new_marker()
    try:
        with watchdog(marker), ChildProcesses(marker) as procs:
            env = flower_env(fed, marker)
            superlink = start_superlink(procs, fed, settings, env, log_path)
            out.print(f"SuperLink up: nodes connect to {settings.fleet_address} (gRPC, TLS)")
            admin = FlowerAdmin(fed, settings)
            for change in sync_registry(admin, Registry(folder)):
                out.print(change)
            run_file = fed.state / "run_config.toml"
            atomic_write_text(run_file, run_config(config_path, fed.run, resume, fed.root))
            reply = admin.call("run", str(write_app(fed)), CONNECTION, "--run-config",
                               str(run_file))  # fmt: skip
            state.run_id, state.status = int(reply["run-id"]), "running"
            state.save(fed)
            out.print(f"run {state.run_id} started: {fed_cfg.rounds} rounds, "
                      f"{fed_cfg.strategy}, preset {fed_cfg.preset}; log: {log_path}")  # fmt: skip
            with log_path.open("ab") as log:
                procs.spawn([executable("flwr"), "log", str(state.run_id), CONNECTION,
                             "--stream"], env, log, log)  # fmt: skip
            status, details = _follow(admin, superlink, state.run_id, fed, log_path)
        state.status = "completed" if status == "finished:completed" else "failed"
        state.details = details or status
    except (Stop, KeyboardInterrupt):
        state.status, state.details = "stopped", "stopped by the admin"
        out.print("stopping: the run ends, the SuperLink shuts down")
    except StepError as e:
        state.status, state.details = "failed", str(e).splitlines()[0]
        raise
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        state.ended_at = time.time()
        state.save(fed)
    if state.status == "failed":
        out.print(log_tail(log_path, lines=20), markup=False)
        out.print(f"[bold red]run {state.run_id} failed:[/] {escape(state.details)}")
        out.print(f"full log: {escape(str(log_path))}")
        raise typer.Exit(1)
    out.print(f"run {state.run_id} {state.status}; `step-coord status` shows its metrics")


def _check_files(cfg: FederationConfig, config_path: Path) -> None:
    """What the ServerApp will read from this machine must be there (the coordinator holds no
    text, so it cannot train a tokenizer: it needs one made beforehand)."""
    if cfg.tokenizer.startswith("bpe:"):
        raise StepError(
            f"{config_path}: federation.tokenizer {cfg.tokenizer!r} would be trained on text the "
            "coordinator does not hold: train one with `step-model tokenizer train` on open "
            "data and give its path, or use 'byte'"
        )
    if cfg.tokenizer != "byte":
        load_tokenizer(cfg.tokenizer)
    if cfg.init_from and not Path(cfg.init_from).exists():
        raise StepError(f"{config_path}: federation.init_from {cfg.init_from} does not exist")


def _follow(
    admin: FlowerAdmin, superlink: Any, run_id: int, fed: FederationFolder, log_path: Path
) -> tuple[str, str]:
    """Print each new round and evaluation until the run finishes; (status, details)."""
    out = console_for(False)
    metrics, offset = fed.run / "metrics.jsonl", 0
    while True:
        time.sleep(POLL_S)
        if metrics.exists():
            with metrics.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            offset += end
            for line in chunk[:end].decode("utf-8").splitlines():
                out.print(_describe(json.loads(line)))
        if superlink.poll() is not None:
            raise StepError(
                f"the SuperLink stopped (exit code {superlink.returncode}): see {log_path}"
            )
        status, details = admin.run_status(run_id)
        if status.startswith("finished"):
            return status, details


def _describe(rec: dict[str, Any]) -> str:
    if rec.get("kind") == "round":
        rejected = rec.get("rejected") or {}
        extra = f", rejected {sorted(rejected)}" if rejected else ""
        if rec.get("missing"):
            extra += f", no reply in time from {rec['missing']}"
        if "epsilon_central" in rec:
            extra += f", central epsilon {rec['epsilon_central']:.3f}"
        loss = "-" if rec["loss"] is None else f"{rec['loss']:.3f}"  # None: only DP nodes
        return (f"round {rec['round']}: {rec['nodes']} nodes, loss {loss}, "
                f"{rec['wall_s']:.1f} s{extra}")  # fmt: skip
    if rec.get("kind") == "eval":
        return f"round {rec['round']}: mean bpb {rec['mean_bpb']:.3f}"
    return json.dumps(rec)


@app.command()
@user_errors
def status(folder: DirOpt = Path("."), json_out: JsonOpt = False) -> None:
    """Run state, current round, nodes, last metrics and bytes moved."""
    fed = FederationFolder(folder).require()
    report = status_report(fed)
    if json_out:
        emit_json(report)
        return
    out = console_for(False)
    out.print(f"run {report['run_id']}: {report['status']}  round {report['round']} of "
              f"{report['rounds']}")  # fmt: skip
    n = report["nodes"]
    out.print(f"nodes: {len(n['connected'])} connected {n['connected']}, "
              f"{len(n['enrolled'])} enrolled, {len(n['revoked'])} revoked")  # fmt: skip
    if report["loss"] is not None:
        out.print(f"last loss {report['loss']:.3f}")
    if report["mean_bpb"] is not None:
        out.print(f"last evaluation (round {report['eval_round']}): mean bpb "
                  f"{report['mean_bpb']:.3f}")  # fmt: skip
    out.print(f"bytes: up {report['bytes_up']:,}, down {report['bytes_down']:,}")
    for round_, reasons in report["rejected"].items():
        for node, reason in reasons.items():
            out.print(f"round {round_}: rejected {node}: {reason}", markup=False)
    for round_, names in report["missing"].items():
        out.print(f"round {round_}: no reply in time from {', '.join(names)}", markup=False)
    for node, eps in sorted(report["epsilon"].items()):
        out.print(f"local DP: {node} has spent epsilon {eps:.3f}")
    if report["epsilon_central"] is not None:
        out.print(f"central DP: epsilon {report['epsilon_central']:.3f} "
                  f"(delta {report['delta_central']:g}, per institution)")  # fmt: skip


def status_report(fed: FederationFolder) -> dict[str, Any]:
    state = read_process_state(fed)
    registry = Registry(fed.root)
    records = read_records(fed.run / "metrics.jsonl")
    rounds = [r for r in records if r.get("kind") == "round"]
    evals = [r for r in records if r.get("kind") == "eval"]
    central = [r["epsilon_central"] for r in rounds if "epsilon_central" in r]
    cfg = load_federation_config(fed.config)
    status = "not started"
    if state is not None:
        status = state.status if state.ended_at is not None or state.alive else "crashed"
    return {
        "status": status,
        "details": state.details if state else "",
        "run_id": state.run_id if state else None,
        "pid": state.pid if state and state.alive else None,
        "round": rounds[-1]["round"] if rounds else 0,
        "rounds": cfg.rounds,
        "nodes": {
            "enrolled": sorted(e.name for e in registry.nodes.values() if e.active),
            "revoked": sorted(e.name for e in registry.nodes.values() if not e.active),
            "connected": _online_names(fed, registry),
        },
        "loss": rounds[-1]["loss"] if rounds else None,
        "eval_round": evals[-1]["round"] if evals else None,
        "mean_bpb": evals[-1]["mean_bpb"] if evals else None,
        "bpb": evals[-1]["bpb"] if evals else {},
        "bytes_up": sum(int(r.get("bytes_up", 0)) for r in records),
        "bytes_down": sum(int(r.get("bytes_down", 0)) for r in records),
        "rejected": {str(r["round"]): r["rejected"] for r in rounds if r.get("rejected")},
        "missing": {str(r["round"]): r["missing"] for r in rounds if r.get("missing")},
        "epsilon": latest_epsilons(rounds),
        "epsilon_central": central[-1] if central else None,
        "delta_central": cfg.central_dp_delta,
    }


@app.command()
@user_errors
def stop(folder: DirOpt = Path("."), timeout_s: float = 60.0) -> None:
    """Stop a running `step-coord start`: the run is stopped, the SuperLink shut down."""
    fed = FederationFolder(folder).require()
    state = read_process_state(fed)
    if state is None or not state.alive:
        raise StepError(f"no coordinator is running for {folder}: nothing to stop")
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = read_process_state(fed)
        if now is None or not now.alive:
            console_for(False).print(f"stopped (pid {state.pid})")
            return
        time.sleep(0.5)
    raise StepError(f"pid {state.pid} did not stop within {timeout_s:.0f} s: kill it")


def main() -> None:
    app()
