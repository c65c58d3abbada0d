"""``step-coord``: the coordinator admin's command line.

    step-coord init DIR [--host NAME ...]     federation folder, CA and server certificate
    step-coord enroll NAME --public-key FILE  allow an institution in
    step-coord nodes [--json]                 enrolled, revoked and connected institutions
    step-coord revoke NAME                    shut an institution out (next connection attempt)
    step-coord start [--config FILE] [--resume] [--from CKPT]  SuperLink + the run, foreground
    step-coord accept-reset NAME              let in a node whose privacy ledger was reset
    step-coord status [--json] [--watch]      run state, round, ETA, nodes, last metrics,
                                              bytes, privacy; --watch: a live view
    step-coord stop                           stop a running `step-coord start`
    step-coord audit [--verify] [--json]      the signed audit log; --verify checks it
    step-coord signing-key                    the federation's public signing key and fingerprint
    step-coord export OUT [--run RUN]         the last model as a Hugging Face folder, with its
                                              model card and training summary

Every command but init works on the federation folder given by --dir (default: the current
folder). See deployment.py for the folder's layout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape

from coordinator.app_signing import SignedApp
from coordinator.audit import AuditBroken, AuditLog
from coordinator.config import FederationConfig, check_same_settings, load_federation_config
from coordinator.control_client import ControlClient
from coordinator.deployment import (
    CONFIG_TEMPLATE,
    CoordinatorSettings,
    FederationFolder,
    ProcessState,
    coordinator_settings,
    read_process_state,
)
from coordinator.follower import Follower
from coordinator.guard import ControlGuard
from coordinator.records import latest_epsilons, read_records
from coordinator.registry import Registry
from coordinator.resume_point import resume_point
from coordinator.roster_file import publish_roster
from coordinator.round_audit import RoundAuditor
from coordinator.status_view import round_times, status_view
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
from coordinator.tls import TlsFiles, create_tls, san_entry
from step_common.byte_progress import byte_progress
from step_common.cli_common import (
    command_line,
    console_for,
    emit_json,
    table,
    user_errors,
)
from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_text, file_lock, sha256_file
from step_common.round_progress import format_duration
from step_common.signatures import (
    create_signing_key,
    key_fingerprint,
    load_signing_key,
    public_line,
    read_verify_key,
)
from step_common.typed_config import parse_section
from step_fed.identity import read_public_key
from step_launch.flwr_cli import log_tail
from step_launch.processes import ChildProcesses, new_marker, watchdog
from step_model.tokenizer import load_tokenizer

app = command_line(__doc__, "step-coord")

DirOpt = Annotated[Path, typer.Option("--dir", help="The federation folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Last line of output: one JSON object.")]


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
    json_out: JsonOpt = False,
) -> None:
    """Create a federation folder: coordinator.yaml, CA and server certificate, signing key,
    empty registry, audit log. Everything is checked first; nothing is left half-made."""
    fed = FederationFolder(folder)
    _check_new_folder(fed, folder)
    _check_init_options(
        preset=preset,
        rounds=rounds,
        inner_steps=inner_steps,
        min_nodes=min_nodes,
        fleet_address=fleet_address,
        control_port=control_port,
    )
    for h in host or []:
        san_entry(h)  # a bad --host fails here, before anything is written
    name = folder.resolve().name
    text = CONFIG_TEMPLATE.format(
        name=name,
        preset=preset,
        rounds=rounds,
        inner_steps=inner_steps,
        min_nodes=min_nodes,
        fleet_address=fleet_address,
        control_port=control_port,
    )
    _create_federation(folder, name=name, hosts=list(host or []), config_text=text, preset=preset)
    _report_init(fed, folder, fleet_address, json_out)


def _check_new_folder(fed: FederationFolder, folder: Path) -> None:
    """``folder`` holds no federation and is absent or an empty folder."""
    if fed.config.exists() or (fed.tls / "ca.key").exists():
        raise StepError(
            f"{folder} already holds a federation: use it, or choose a new folder (re-running "
            "init would replace the CA that every node trusts)"
        )
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise StepError(f"{folder} exists and is not an empty folder: choose a new folder")


def _check_init_options(
    *,
    preset: str,
    rounds: int,
    inner_steps: int,
    min_nodes: int,
    fleet_address: str,
    control_port: int,
) -> None:
    """The options make a valid configuration (checked before anything is written)."""
    try:
        options = "step-coord init options"
        listen = {"fleet_address": fleet_address, "control_port": control_port}
        parse_section(CoordinatorSettings, listen, options, "coordinator")
        training = {"preset": preset, "rounds": rounds, "inner_steps": inner_steps,
                    "min_nodes": min_nodes}  # fmt: skip
        parse_section(FederationConfig, training, options, "federation")
    except StepError as e:
        raise StepError(f"{e}: fix the option and run init again (nothing was written)") from None


def _create_federation(
    folder: Path, *, name: str, hosts: list[str], config_text: str, preset: str
) -> None:
    """Make the whole federation folder in one rename, or nothing."""
    try:
        if folder.exists():
            folder.rmdir()  # empty: the whole federation appears in one rename below
        with atomic_directory(folder) as tmp:
            _make_federation(FederationFolder(tmp), name, hosts, config_text, preset)
    except OSError as e:
        raise StepError(
            f"cannot create {folder} ({e.strerror or e}): choose a writable place with free "
            "space; nothing was written"
        ) from None


def _report_init(fed: FederationFolder, folder: Path, fleet_address: str, json_out: bool) -> None:
    """What the admin hands to node operators, and what to do next."""
    key = read_verify_key(fed.verify_key)
    out = console_for(json_out)
    out.print(f"federation folder {folder}: coordinator.yaml, registry.json, tls/, audit.jsonl")
    out.print(f"give node operators the CA certificate {fed.tls / 'ca.crt'} and the "
              f"federation's public signing key {fed.verify_key}")  # fmt: skip
    out.print(f"signing key fingerprint: {key_fingerprint(key)}  (read it to each operator by "
              "phone: nodes run only apps signed with this key)")  # fmt: skip
    out.print(f"nodes connect to {fleet_address} (a host named in --host, port as given)")
    out.print("next: `step-coord enroll NAME --public-key node.pub`, then `step-coord start`")
    if json_out:
        emit_json({"folder": str(folder), "ca_cert": str(fed.tls / "ca.crt"),
                   "federation_key": str(fed.verify_key),
                   "signing_key_fingerprint": key_fingerprint(key),
                   "fleet_address": fleet_address})  # fmt: skip


def _make_federation(
    fed: FederationFolder, name: str, hosts: list[str], config_text: str, preset: str
) -> None:
    create_tls(fed.tls, name, hosts)
    create_signing_key(fed.tls, f"step-federation-{name}")
    Registry(fed.root).save()
    atomic_write_text(fed.config, config_text)
    load_federation_config(fed.config)  # the template must load
    key = load_signing_key(fed.signing_key)
    signer = key_fingerprint(key.public_key())
    AuditLog(fed.root).append(
        key, "init", {"hosts": hosts, "preset": preset, "signing_key": signer}
    )


@app.command()
@user_errors
def enroll(
    name: Annotated[str, typer.Argument(help="The institution's name.")],
    public_key: Annotated[Path, typer.Option(help="The node.pub the operator sent.")],
    folder: DirOpt = Path("."),
    json_out: JsonOpt = False,
) -> None:
    """Allow an institution in (takes effect at once on a running coordinator)."""
    fed = FederationFolder(folder).require()
    registry = Registry(folder)
    key = load_signing_key(fed.signing_key)
    entry = registry.enroll(name, read_public_key(public_key))
    publish_roster(folder, key)  # secure aggregation's nodes check round keys against it
    AuditLog(fed.root).append(key, "enroll", {"node": name, "fingerprint": entry.fingerprint})
    out = console_for(json_out)
    out.print(f"enrolled {name}: {entry.fingerprint}")
    out.print("compare this fingerprint with the one the operator sees in `step-node init`")
    applied = _apply_if_running(fed, out)
    if json_out:
        emit_json({"name": name, "fingerprint": entry.fingerprint, "applied": applied})


@app.command()
@user_errors
def revoke(
    name: Annotated[str, typer.Argument(help="The institution's name.")],
    folder: DirOpt = Path("."),
) -> None:
    """Shut an institution out; it is refused from its next connection attempt on."""
    fed = FederationFolder(folder).require()
    key = load_signing_key(fed.signing_key)
    registry = Registry(folder)
    entry = registry.revoke(name)
    publish_roster(folder, key)
    AuditLog(fed.root).append(key, "revoke", {"node": name, "fingerprint": entry.fingerprint})
    out = console_for(False)
    out.print(f"revoked {name}")
    _apply_if_running(fed, out)


@app.command("accept-reset")
@user_errors
def accept_reset(
    name: Annotated[str, typer.Argument(help="The institution whose ledger was reset.")],
    folder: DirOpt = Path("."),
) -> None:
    """Accept that a node's privacy ledger was reset: its next (lower) epsilon is let through."""
    fed = FederationFolder(folder).require()
    key = load_signing_key(fed.signing_key)
    entry = Registry(folder).accept_reset(name)
    details = {"node": name, "at": entry.privacy_reset_accepted}
    AuditLog(fed.root).append(key, "accept-reset", details)
    console_for(False).print(
        f"accepted the privacy-ledger reset of {name}: its next update may report less epsilon "
        "than before (once); the privacy it spent before the reset is not undone, so the "
        "federation's statement of what it spent should add both",
        markup=False,
    )


def _apply_if_running(fed: FederationFolder, out: Console) -> bool:
    """Register/unregister at a running coordinator's SuperLink; False when none runs."""
    state = read_process_state(fed)
    if state is None or not state.alive:
        out.print("takes effect when `step-coord start` runs")
        return False
    admin = FlowerAdmin(fed, coordinator_settings(fed.config))
    with file_lock(fed.control_lock):
        for change in sync_registry(admin, Registry(fed.root)):
            out.print(f"coordinator: {change}")
    return True


@app.command()
@user_errors
def nodes(folder: DirOpt = Path("."), json_out: JsonOpt = False) -> None:
    """Enrolled and revoked institutions, which are connected now, and any node registered
    behind the admin's back (a running coordinator removes those within seconds)."""
    fed = FederationFolder(folder).require()
    registry = Registry(folder)
    listed = _listed_nodes(fed)
    online = _online_names(listed, registry)
    rows = []
    for e in registry.as_json():
        e["connected"] = e["name"] in online
        rows.append(e)
    foreign = _unenrolled(listed, registry)
    if json_out:
        emit_json({"nodes": rows, "unenrolled": foreign})
        return
    out = console_for(False)
    # Whole fingerprints, never cut at the terminal's width: the admin compares every character.
    out.width = max(out.width, 132)
    out.print(
        table(
            "institutions",
            ["name", "status", "connected", "fingerprint"],
            [
                [r["name"], r["status"], "yes" if r["connected"] else "no", r["fingerprint"]]
                for r in rows
            ]
            + [
                [f"node id {n['node_id']}", "NOT ENROLLED", n["status"], "unknown"] for n in foreign
            ],
        )
    )
    for n in foreign:
        out.print(f"ALERT: node id {n['node_id']} is registered at the SuperLink but was not "
                  "enrolled with step-coord: a running coordinator unregisters it")  # fmt: skip


def _listed_nodes(fed: FederationFolder) -> list[dict[str, Any]]:
    """The SuperLink's node registrations ([] when the coordinator is not running)."""
    state = read_process_state(fed)
    if state is None or not state.alive:
        return []
    try:
        return FlowerAdmin(fed, coordinator_settings(fed.config)).list_nodes()
    except StepError:
        return []


def _online_names(listed: list[dict[str, Any]], registry: Registry) -> list[str]:
    names = (registry.name_of(int(n["node-id"])) for n in listed if n.get("status") == "online")
    return sorted(name for name in names if name is not None)


def _unenrolled(listed: list[dict[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    return [
        {"node_id": int(n["node-id"]), "status": str(n.get("status", ""))}
        for n in listed
        if registry.name_of(int(n["node-id"])) is None and n.get("status") != "unregistered"
    ]


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
    from_: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Resume from this checkpoint (one of run/checkpoints/, or a signed copy from "
            "a backup); implies --resume.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Start the SuperLink (TLS, node authentication) and run the training to its end."""
    out = console_for(json_out)
    resume = resume or from_ is not None
    launch = _preflight(FederationFolder(folder).require(), config, resume, out, from_)
    fed, settings, key = launch.fed, launch.settings, launch.key
    state = ProcessState(os.getpid(), "starting", time.time(), settings.fleet_address,
                         settings.control_port)  # fmt: skip
    state.save(fed)
    fed.logs.mkdir(parents=True, exist_ok=True)
    log_path = fed.logs / "superlink.log"
    audit = AuditLog(fed.root)
    started = {"config": str(launch.config_path), "config_sha256": sha256_file(launch.config_path)}
    audit.append(key, "resume" if resume else "start", started)
    old_handler = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        state.status, state.details = _serve(launch, state, log_path)
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
        audit.append(key, "end", {"run_id": state.run_id, "status": state.status,
                                  "details": state.details})  # fmt: skip
    _report_end(state, log_path, out, json_out)
    if state.status in ("failed", "interrupted"):
        raise typer.Exit(1)


def _report_end(state: ProcessState, log_path: Path, out: Console, json_out: bool) -> None:
    """How the run ended (with the log's tail when it failed)."""
    if state.status in ("failed", "interrupted"):
        if state.status == "failed":
            out.print(log_tail(log_path, lines=20), markup=False)
        out.print(f"[bold red]run {state.run_id} {state.status}:[/] {escape(state.details)}")
        out.print(f"full log: {escape(str(log_path))}")
    else:
        out.print(f"run {state.run_id} {state.status}; `step-coord status` shows its metrics")
    if json_out:
        emit_json({"run_id": state.run_id, "status": state.status, "details": state.details,
                   "log": str(log_path)})  # fmt: skip


@dataclass(frozen=True)
class _Launch:
    """What `step-coord start` checked before starting anything."""

    fed: FederationFolder
    config_path: Path
    cfg: FederationConfig
    settings: CoordinatorSettings
    key: Ed25519PrivateKey
    resume: bool
    """Continue from a committed round (False when --resume found none)."""
    out: Console
    """Where the human output goes (stderr under --json)."""


def _preflight(
    fed: FederationFolder,
    config: Path | None,
    resume: bool,
    out: Console,
    from_: Path | None = None,
) -> _Launch:
    """Every check that can fail before anything starts."""
    config_path = (config or fed.config).resolve()
    cfg = load_federation_config(config_path)
    _check_files(cfg, config_path)
    settings = coordinator_settings(config_path)
    key = load_signing_key(fed.signing_key)
    publish_roster(fed.root, key)  # a federation enrolled before rosters existed gets one
    previous = read_process_state(fed)
    if previous is not None and previous.alive:
        raise StepError(
            f"a coordinator is already running for {fed.root} (pid {previous.pid}): "
            "`step-coord stop` it first"
        )
    committed = (fed.run / "LATEST").exists()
    if not resume and committed:
        raise StepError(
            f"{fed.run} holds an earlier run: `step-coord start --resume` continues it; to "
            "start over, move that folder away"
        )
    if resume and not committed and from_ is None:
        out.print("no round was committed before: the run starts from round 1")
    if resume and (committed or from_ is not None):
        _check_resume_point(fed, cfg, key, from_, out)
        committed = True
    return _Launch(fed, config_path, cfg, settings, key, resume and committed, out)


def _check_resume_point(
    fed: FederationFolder,
    cfg: FederationConfig,
    key: Ed25519PrivateKey,
    from_: Path | None,
    out: Console,
) -> None:
    """The checkpoint the resume starts from verifies and belongs to this configuration;
    a damaged newest one is skipped for the newest that verifies, loudly and in the audit."""
    point = resume_point(fed.run, key.public_key(), from_)
    check_same_settings(cfg, point.state)
    for name, why in point.skipped.items():
        out.print(f"[bold red]WARNING: checkpoint {escape(name)} cannot be used:[/] "
                  f"{escape(why)}")  # fmt: skip
    if point.skipped or point.chosen:
        how = "as chosen with --from" if point.chosen else "the newest that verifies"
        out.print(f"[bold]resuming from {escape(point.checkpoint.name)} (round {point.round}), "
                  f"{how}[/]: later rounds are trained again")  # fmt: skip
        AuditLog(fed.root).append(key, "rewind", {"checkpoint": point.checkpoint.name,
                                                  "round": point.round,
                                                  "skipped": point.skipped})  # fmt: skip


def _serve(launch: _Launch, state: ProcessState, log_path: Path) -> tuple[str, str]:
    """SuperLink up, registry in step, the signed app submitted, then follow it to its end;
    (state, details) of the finished run."""
    fed, settings, key, out = launch.fed, launch.settings, launch.key, launch.out
    marker = new_marker()
    with watchdog(marker), ChildProcesses(marker) as procs:
        env = flower_env(fed, marker)
        superlink = start_superlink(procs, fed, settings, env, log_path)
        out.print(f"SuperLink up: nodes connect to {settings.fleet_address} (gRPC, TLS)")
        admin = FlowerAdmin(fed, settings)
        control = ControlClient(settings.control_port, TlsFiles(fed.tls).ca_cert)
        guard = ControlGuard(fed, control, key, lambda line: out.print(line, markup=False))
        with file_lock(fed.control_lock):
            for change in sync_registry(admin, Registry(fed.root)):
                out.print(change)
        guard.foreign_nodes()  # registrations made behind the admin's back persist
        state.run_id = _submit(admin, guard, launch)
        state.status = "running"
        state.save(fed)
        cfg = launch.cfg
        out.print(f"run {state.run_id} started: {cfg.rounds} rounds, {cfg.strategy}, preset "
                  f"{cfg.preset}; app signed {key_fingerprint(key.public_key())}; "
                  f"log: {log_path}")  # fmt: skip
        with log_path.open("ab") as log:
            procs.spawn([executable("flwr"), "log", str(state.run_id), CONNECTION,
                         "--stream"], env, log, log)  # fmt: skip
        follower = Follower(guard, RoundAuditor(fed, key), launch.resume, out, cfg.rounds)
        return guard.outcome(*follower.follow(superlink, state.run_id, log_path))


def _submit(admin: FlowerAdmin, guard: ControlGuard, launch: _Launch) -> int:
    """Submit the federation's app, signed with its key (app_signing.py); the run id."""
    fed = launch.fed
    run_file = fed.state / "run_config.toml"
    atomic_write_text(run_file, run_config(launch.config_path, fed.run, launch.resume, fed.root))
    signed = SignedApp(write_app(fed), launch.key)
    reply = admin.submit(fed.state / "app", run_file)
    signed.check_submitted(str(reply.get("fab-hash", "")))
    signed.store_signature(fed.database)
    guard.run_id, guard.app = int(reply["run-id"]), signed
    return guard.run_id


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


@app.command()
@user_errors
def status(
    folder: DirOpt = Path("."),
    json_out: JsonOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="A live view, refreshed until Ctrl-C.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes (--watch).")] = 5.0,
) -> None:
    """Run state, current round, nodes, last metrics and bytes moved; --watch keeps a live view
    (round, ETA, connected nodes, bits per byte per language, privacy spent)."""
    fed = FederationFolder(folder).require()
    if watch:
        _watch(fed, interval, json_out)
        return
    report = status_report(fed)
    if json_out:
        emit_json(report)
        return
    out = console_for(False)
    eta = "" if report["eta_s"] is None else f", ETA {format_duration(report['eta_s'])}"
    out.print(f"run {report['run_id']}: {report['status']}  round {report['round']} of "
              f"{report['rounds']}{eta}")  # fmt: skip
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
    for alert in report["alerts"]:
        out.print(f"ALERT: {alert}", markup=False)
    for foreign in n["unenrolled"]:
        out.print(f"ALERT: node id {foreign['node_id']} is registered but not enrolled")
    for node, eps in sorted(report["epsilon"].items()):
        out.print(f"local DP: {node} has spent epsilon {eps:.3f}")
    if report["epsilon_central"] is not None:
        out.print(f"central DP: epsilon {report['epsilon_central']:.3f} "
                  f"(delta {report['delta_central']:g}, per institution)")  # fmt: skip


def _watch(fed: FederationFolder, interval: float, json_out: bool) -> None:
    """Redraw the status view every ``interval`` seconds until Ctrl-C; without a terminal
    (a log), print each view one after the other."""
    if json_out:
        raise StepError("--watch draws a live view and --json prints one report: pick one")
    if interval <= 0:
        raise StepError(f"--interval {interval:g}: give a number of seconds above 0")
    out = console_for(False)

    def view() -> RenderableType:
        return status_view(status_report(fed), time.strftime("%H:%M:%S"))

    try:
        if not out.is_terminal:
            while True:
                out.print(view())
                out.rule()
                time.sleep(interval)
        with Live(view(), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        pass


def status_report(fed: FederationFolder) -> dict[str, Any]:
    state = read_process_state(fed)
    registry = Registry(fed.root)
    listed = _listed_nodes(fed)
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
            "connected": _online_names(listed, registry),
            "unenrolled": _unenrolled(listed, registry),
        },
        "alerts": _recent_alerts(fed),
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
        **round_times(rounds, cfg.rounds, running=status == "running"),
    }


def _recent_alerts(fed: FederationFolder) -> list[str]:
    """The audit log's alerts since the last start or resume."""
    alerts: list[str] = []
    for entry in AuditLog(fed.root).entries():
        if entry.get("action") in ("start", "resume"):
            alerts = []
        elif entry.get("action") == "alert":
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry["time"])))
            alerts.append(f"{when} {entry['details'].get('alert', '')}")
    return alerts


@app.command()
@user_errors
def stop(folder: DirOpt = Path("."), timeout_s: float = 60.0) -> None:
    """Stop a running `step-coord start`: the run is stopped, the SuperLink shut down."""
    fed = FederationFolder(folder).require()
    state = read_process_state(fed)
    if state is None or not state.alive:
        raise StepError(f"no coordinator is running for {folder}: nothing to stop")
    AuditLog(fed.root).append(load_signing_key(fed.signing_key), "stop",
                              {"pid": state.pid, "run_id": state.run_id})  # fmt: skip
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = read_process_state(fed)
        if now is None or not now.alive:
            console_for(False).print(f"stopped (pid {state.pid})")
            return
        time.sleep(0.5)
    raise StepError(f"pid {state.pid} did not stop within {timeout_s:.0f} s: kill it")


@app.command()
@user_errors
def audit(
    folder: DirOpt = Path("."),
    verify_log: Annotated[
        bool, typer.Option("--verify", help="Check the chain, signatures and end of the log.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """The audit log: admin actions, committed rounds, alerts; --verify checks that no line
    was edited, deleted, inserted or reordered (exit 1 naming the line if one was)."""
    fed = FederationFolder(folder).require()
    log = AuditLog(fed.root)
    entries = log.entries()
    problems = log.verify(read_verify_key(fed.verify_key)) if verify_log else []
    if json_out:
        emit_json({"entries": entries, "verified": verify_log and not problems,
                   "problems": problems})  # fmt: skip
    else:
        out = console_for(False)
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e.get("time", 0))))
            out.print(f"{e.get('seq')}  {when}  {e.get('action')}  "
                      f"{json.dumps(e.get('details'), sort_keys=True)}", markup=False)  # fmt: skip
        if verify_log and not problems:
            out.print(f"audit log verified: {len(entries)} entries, chained and signed by "
                      f"{key_fingerprint(read_verify_key(fed.verify_key))}")  # fmt: skip
    if problems:
        raise AuditBroken(f"{log.path} does not verify: " + "; ".join(problems))


@app.command("signing-key")
@user_errors
def signing_key(folder: DirOpt = Path("."), json_out: JsonOpt = False) -> None:
    """The federation's public signing key and its fingerprint (to read to node operators)."""
    fed = FederationFolder(folder).require()
    key = read_verify_key(fed.verify_key)
    report = {"public_key": public_line(key), "fingerprint": key_fingerprint(key),
              "file": str(fed.verify_key)}  # fmt: skip
    out = console_for(json_out)
    out.print(f"{report['public_key']}\nfingerprint: {report['fingerprint']}\n"
              f"give node operators {fed.verify_key} with ca.crt", soft_wrap=True)  # fmt: skip
    if json_out:
        emit_json(report)


@app.command("export")
@user_errors
def export(
    out: Annotated[Path, typer.Argument(help="A new folder for the exported model.")],
    folder: DirOpt = Path("."),
    run: Annotated[
        Path | None, typer.Option(help="A step-sim run folder (instead of --dir's run).")
    ] = None,
    name: Annotated[str, typer.Option(help="The model's name in its card.")] = "",
    license_id: Annotated[
        str, typer.Option("--license", help="The model's license id for its card's metadata.")
    ] = "other",
    shard_size: Annotated[
        str, typer.Option(help="Weights above this split into shards (5GB, 500MB).")
    ] = "5GB",
    json_out: JsonOpt = False,
) -> None:
    """The federation's last committed model as a Hugging Face folder (transformers loads it
    with no custom code), with a model card and training_summary.json from the run's records."""
    from coordinator.model_card import model_card
    from coordinator.training_summary import TrainingSummary, summarize
    from step_model.checkpoint import load_checkpoint
    from step_model.hf_format import export_hf
    from step_model.hf_format import shard_size as parse_size

    run_dir = run if run is not None else FederationFolder(folder).require().run
    limit = parse_size(shard_size)
    console = console_for(json_out)
    with console.status(f"reading the last checkpoint of {run_dir} and the run's records"):
        ckpt = load_checkpoint(run_dir, with_optimizer=False)
        summary = summarize(run_dir, ckpt, name or f"step-{Path(run_dir).resolve().name}")
    extra = {
        "README.md": model_card(summary, license_id),
        "training_summary.json": summary.model_dump_json(indent=1) + "\n",
        "training_summary.schema.json": json.dumps(TrainingSummary.model_json_schema(),
                                                   indent=1) + "\n",
    }  # fmt: skip
    with byte_progress(console, "writing the weights") as progress:
        exported = export_hf(ckpt, out, limit, extra, progress)
    console.print(f"exported round {ckpt.state.get('round')} of {run_dir} to {exported} "
                  "(model, tokenizer, README.md model card, training_summary.json)",
                  markup=False)  # fmt: skip
    if json_out:
        emit_json({"out": str(exported), "round": ckpt.state.get("round"),
                   "files": sorted(p.name for p in exported.iterdir())})  # fmt: skip


def main() -> None:
    os.umask(0o077)  # everything step-coord and its SuperLink create is the admin's alone
    app()
