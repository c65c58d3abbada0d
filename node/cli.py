"""``step-node``: the node operator's command line.

    step-node init DIR --coordinator HOST:PORT --ca FILE --federation-key FILE [--name NAME]
                   [--data DIR]
    step-node check [--dir DIR] [--tokenizer FILE] [--json]
    step-node start [--dir DIR]
    step-node workers [--dir DIR]
    step-node status [--dir DIR] [--json]
    step-node privacy [--dir DIR] [--json]

init writes node.yaml and the node's key pair and prints the public key and its fingerprint for
the coordinator admin; check reads the local data exactly as training will, before anything
connects anywhere; start runs the Flower SuperNode (TLS, node key, only apps signed with the
federation key) and the node's torchrun workers until Ctrl-C; workers runs a host's share of
the workers on each other host of a node whose workers span several hosts; status shows
whether it runs, every app it refused and the rounds it trained (bytes, time, epsilon);
privacy shows the privacy ledger: every DP round trained or refused, epsilon spent and what is
left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import torch
import typer
from cryptography.hazmat.primitives.asymmetric import ed25519
from rich.console import Console

from node.data import read_node_texts
from node.keys import PUBLIC_KEY, create_key_pair, node_signer
from node.ledger import RESET_MEANING, PrivacyLedger
from node.memory_plan import FILL, GIB, device_bytes, step_memory
from node.node_config import NODE_FILE, check_address, load_node_file, write_node_file
from node.round_journal import journal_summary
from node.settings import NodeSettings
from node.supernode import FEDERATION_KEY, node_status, run_node, run_workers
from step_common.cli_common import (
    command_line,
    console_for,
    emit_json,
    table,
    user_errors,
)
from step_common.errors import StepError
from step_common.fileio import atomic_write_text, check_writable
from step_common.round_progress import format_duration
from step_common.signatures import fingerprint, key_fingerprint, public_line, read_verify_key
from step_fed.identity import read_public_key
from step_model.config import preset as model_preset
from step_model.data import tokenize_texts
from step_model.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from step_model.train import pick_device

app = command_line(__doc__, "step-node")

DirOpt = Annotated[Path, typer.Option("--dir", help="The node folder (holds node.yaml).")]


@app.command()
@user_errors
def init(
    folder: Annotated[Path, typer.Argument(help="Node folder to create.")],
    coordinator: Annotated[str, typer.Option(help="HOST:PORT the coordinator admin gave.")],
    ca: Annotated[Path, typer.Option(help="The federation's ca.crt from the admin.")],
    federation_key: Annotated[
        Path, typer.Option(help="The federation.pub from the admin: only apps it signed run here.")
    ],
    name: Annotated[str | None, typer.Option(help="Institution name (default: folder).")] = None,
    data: Annotated[str, typer.Option(help="Folder with this institution's text.")] = "data",
) -> None:
    """Create node.yaml and the node's ECDSA P-384 key pair; print the public key to send."""
    signing = _check_init_inputs(
        folder, coordinator=coordinator, ca=ca, federation_key=federation_key
    )
    node_name = name or folder.resolve().name
    data_path = str(Path(data).resolve()) if Path(data).exists() else data
    public = _create_node(
        folder,
        ca=ca,
        signing=signing,
        node_name=node_name,
        coordinator=coordinator,
        data_path=data_path,
    )
    _print_enrollment(folder, signing, public)


def _check_init_inputs(
    folder: Path, *, coordinator: str, ca: Path, federation_key: Path
) -> ed25519.Ed25519PublicKey:
    """Validate init's inputs before anything is written; return the federation signing key."""
    try:
        check_address(coordinator, "--coordinator")
    except ValueError as e:
        raise StepError(str(e)) from None
    if not ca.is_file():
        raise StepError(f"--ca {ca} does not exist: give the ca.crt the coordinator admin sent")
    if b"BEGIN CERTIFICATE" not in ca.read_bytes():
        raise StepError(f"--ca {ca} is not a PEM certificate: ask the admin for tls/ca.crt")
    signing = read_verify_key(federation_key)  # an Ed25519 public key, or a clear error
    if (folder / NODE_FILE).exists() or (folder / "node.key").exists():
        raise StepError(
            f"{folder} already holds a node: use it (`step-node start --dir {folder}`), or "
            "choose a new folder (init would replace the key the coordinator enrolled)"
        )
    return signing


def _create_node(
    folder: Path,
    *,
    ca: Path,
    signing: ed25519.Ed25519PublicKey,
    node_name: str,
    coordinator: str,
    data_path: str,
) -> str:
    """Write the node folder; return the node's public key line. All or nothing."""
    made_folder = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, folder / "ca.crt")
        atomic_write_text(folder / FEDERATION_KEY, public_line(signing) + "\n")
        write_node_file(folder, node_name, coordinator, data_path)
        return create_key_pair(folder, node_name)
    except OSError as e:  # unwritable place, full disk
        _undo_init(folder, made_folder)
        raise StepError(
            f"cannot create the node in {folder} ({e.strerror or e}): choose a writable place "
            "with free space; nothing was written"
        ) from None
    except StepError:  # e.g. a node name node.yaml cannot hold
        _undo_init(folder, made_folder)
        raise


def _print_enrollment(folder: Path, signing: ed25519.Ed25519PublicKey, public: str) -> None:
    """Tell the operator what was written and what to send to (and check with) the admin."""
    out = console_for(False)
    out.print(f"node folder {folder}: node.yaml, node.key (private, 0600), node.pub, ca.crt, "
              f"{FEDERATION_KEY}")  # fmt: skip
    out.print(f"federation signing key: {key_fingerprint(signing)}  (check it with the admin "
              "by phone: this node runs only apps signed with it)")  # fmt: skip
    out.print("send this public key to the coordinator admin:")
    out.print(public, soft_wrap=True)
    out.print(f"fingerprint: {fingerprint(public)}  (the admin sees the same at enrollment)")
    out.print(f"next: set `data:` in {folder / NODE_FILE}, run `step-node check`, then "
              "`step-node start` once enrolled")  # fmt: skip


def _undo_init(folder: Path, made_folder: bool) -> None:
    """Remove what a failed init wrote: nothing is left half-made."""
    for made in ("ca.crt", FEDERATION_KEY, NODE_FILE, "node.key", PUBLIC_KEY):
        with contextlib.suppress(OSError):
            (folder / made).unlink(missing_ok=True)
    if made_folder:
        with contextlib.suppress(OSError):
            folder.rmdir()


@app.command()
@user_errors
def check(
    folder: DirOpt = Path("."),
    tokenizer: Annotated[
        Path | None, typer.Option(help="Count tokens with this tokenizer.json (default: bytes).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Also the memory a round of this model preset needs per device, "
            "refused if the devices cannot hold it (e.g. 1b)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="With --preset: the round's batch.")] = 8,
    seq_len: Annotated[int, typer.Option(help="With --preset: the round's sequence length.")] = 128,
    json_out: Annotated[bool, typer.Option("--json", help="Last line: one JSON object.")] = False,
) -> None:
    """Read the local data exactly as training will; report bytes and tokens per language;
    with --preset, the device layout and the memory per device a round needs."""
    nf = load_node_file(folder / NODE_FILE)
    if not nf.ca.is_file():
        raise StepError(f"{nf.ca} is missing: copy the federation's ca.crt there")
    check_writable(nf.settings.state_dir, "state_dir")
    key = read_public_key(nf.folder / PUBLIC_KEY)
    tok: Tokenizer = load_tokenizer(tokenizer) if tokenizer else ByteTokenizer()
    train, valid = read_node_texts(nf.settings)
    train_tokens, valid_tokens = tokenize_texts(train, tok), tokenize_texts(valid, tok)
    rows = {
        lang: {
            "train_bytes": len(train[lang].encode("utf-8")),
            "train_tokens": len(train_tokens[lang].tokens),
            "valid_bytes": len(valid.get(lang, "").encode("utf-8")),
            "valid_tokens": len(valid_tokens[lang].tokens) if lang in valid_tokens else 0,
        }
        for lang in sorted(train)
    }
    report = {
        "name": nf.name,
        "data": str(nf.settings.data),
        "tokenizer": str(tokenizer) if tokenizer else "byte",
        "languages": rows,
        "train_tokens": sum(r["train_tokens"] for r in rows.values()),
        "device": _device_name(nf.settings.device),
        "workers": nf.settings.workers,
        "hosts": nf.settings.hosts,
        "fingerprint": fingerprint(key),
        "ok": True,
    }
    out = console_for(json_out)
    out.print(table(f"{nf.name}: {nf.settings.data}", ["lang", "train bytes", "train tokens",
                    "held-out bytes", "held-out tokens"],
                    [[lang, f"{r['train_bytes']:,}", f"{r['train_tokens']:,}",
                      f"{r['valid_bytes']:,}", f"{r['valid_tokens']:,}"]
                     for lang, r in rows.items()]))  # fmt: skip
    no_holdout = [lang for lang, r in rows.items() if not r["valid_bytes"]]
    if no_holdout:
        out.print(f"note: no held-out text for {no_holdout}: they are trained, not evaluated")
    out.print(f"data ok: {len(rows)} languages, {report['train_tokens']:,} training tokens")
    out.print(f"trains on: {report['device']} (resources.device: {nf.settings.device})")
    if nf.settings.workers > 1:
        hosts = nf.settings.hosts
        where = "" if hosts == 1 else (f" on {hosts} hosts meeting at {nf.settings.rendezvous} "
                                       "(`step-node workers` on each other host)")  # fmt: skip
        out.print(f"with {nf.settings.workers} torchrun workers{where}, FSDP2-sharded "
                  "(resources.gpus; `step-node start` starts them)")  # fmt: skip
    memory = None
    if preset is not None:
        memory = _memory_report(nf.settings, preset, batch_size, seq_len, tok, out)
        report["memory"] = memory
    if json_out:
        emit_json(report)
    if memory is not None and not memory["fits"]:
        raise StepError(str(memory["refusal"]))


def _memory_report(
    settings: NodeSettings, preset: str, batch: int, seq_len: int, tok: Tokenizer, out: Console
) -> dict[str, Any]:
    """The memory plan of one inner step per device (node/memory_plan.py), printed."""
    device = pick_device(settings.device)
    workers = settings.workers
    precision = settings.precision
    if precision == "auto" or workers == 1:
        precision = "bf16" if device.type == "cuda" else "fp32"
    config = model_preset(preset).with_vocab(tok.vocab_size)
    shards = 1 if settings.sharding == "replicate" else workers
    plan = step_memory(
        config, workers, batch, seq_len, precision, settings.activation_checkpointing, shards
    )
    capacity, name = device_bytes(device, workers // settings.hosts)
    fits = plan.total <= FILL * capacity
    rows = [[what, f"{n / GIB:,.2f}"] for what, n in plan.rows()]
    rows.append(["total", f"{plan.total / GIB:,.2f}"])
    out.print(table(f"one inner step of {preset} (batch {batch} x {seq_len}, {precision}) on "
                    f"each of {workers} device(s)", ["", "GiB"], rows))  # fmt: skip
    verdict = "fits" if fits else "does NOT fit"
    out.print(f"{verdict}: {plan.total / GIB:,.2f} GiB of {name} (at most {FILL:.0%})")
    more = (
        "raise resources.gpus (the model is sharded over the workers)"
        if device.type == "cuda"
        else "train on GPUs (resources.device: cuda; a CPU node's workers share one memory)"
    )
    refusal = (
        f"a round of {preset} (batch {batch} x {seq_len}) needs about {plan.total / GIB:,.1f} "
        f"GiB per device, more than {FILL:.0%} of {name}: {more}, turn on "
        "resources.activation_checkpointing, or ask the coordinator for a smaller batch or "
        "sequence length"
    )
    return {"preset": preset, "workers": workers, "precision": precision,
            "bytes_per_device": dict(plan.rows()), "total_bytes": plan.total,
            "device_bytes": capacity, "fits": fits,
            "refusal": None if fits else refusal}  # fmt: skip


def _device_name(setting: str) -> str:
    device = pick_device(setting)
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


@app.command()
@user_errors
def start(folder: DirOpt = Path(".")) -> None:
    """Run the Flower SuperNode (TLS, node key) until Ctrl-C; reconnects with backoff."""
    nf = load_node_file(folder / NODE_FILE)
    read_node_texts(nf.settings)  # refuse to connect with data that training cannot read
    check_writable(nf.settings.state_dir, "state_dir")
    out = console_for(False)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: clean up like Ctrl-C
    try:
        run_node(nf, lambda line: out.print(line, markup=False))
    except KeyboardInterrupt:
        out.print("stopped")


@app.command()
@user_errors
def workers(folder: DirOpt = Path(".")) -> None:
    """On each other host of a node whose workers span several hosts (resources.hosts): run
    this host's torchrun workers until Ctrl-C (the node folder must be on a shared filesystem)."""
    nf = load_node_file(folder / NODE_FILE)
    read_node_texts(nf.settings)  # every host reads the data itself
    check_writable(nf.settings.state_dir, "state_dir")
    out = console_for(False)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = run_workers(nf, lambda line: out.print(line, markup=False))
    except KeyboardInterrupt:
        out.print("stopped")
        return
    if code != 0:
        raise StepError(f"the workers ended with exit code {code}: see the lines above")


@app.command()
@user_errors
def status(
    folder: DirOpt = Path("."),
    json_out: Annotated[bool, typer.Option("--json", help="Last line: one JSON object.")] = False,
) -> None:
    """Whether the node runs, where it connects, which keys it trusts, every app it refused
    (not signed with the federation key), and the rounds it trained: bytes, time, epsilon."""
    nf = load_node_file(folder / NODE_FILE)
    report = node_status(nf)
    report["training"] = journal_summary(nf.settings.state_dir)
    out = console_for(json_out)
    out.print(f"{nf.name}: {report['state']}; coordinator {nf.coordinator}", markup=False)
    _print_training(report["training"], out)
    out.print(f"node key {report['node_key']}; runs only apps signed by "
              f"{report['federation_key']}", markup=False)  # fmt: skip
    for r in report["refused_apps"]:
        out.print(f"REFUSED app of run {r['run_id']} at {r['time']}: {r['reason']}", markup=False)
    if not report["refused_apps"]:
        out.print("no app refused")
    out.print(f"log: {report['log']}", markup=False)
    if json_out:
        emit_json(report)


def _print_training(t: dict[str, Any], out: Console) -> None:
    """The node's rounds (its journal, node/round_journal.py): totals of the last run, then
    its last rounds one by one."""
    if not t["rounds_trained"]:
        out.print("no round trained yet")
        return
    eps = "" if t["epsilon"] is None else f"; epsilon spent {t['epsilon']:.3f}"
    out.print(f"run {t['run_id']}: trained {t['run_rounds']} rounds (last: round "
              f"{t['last_round']} of {t['total_rounds']}), {t['tokens']:,} tokens, received "
              f"{t['bytes_received'] / 1e6:,.2f} MB, sent {t['bytes_sent'] / 1e6:,.2f} MB, "
              f"{format_duration(t['mean_round_s'])} per round{eps}", markup=False)  # fmt: skip
    rows = [[str(e["round"]), str(e["steps"]), f"{e['tokens']:,}",
             f"{e['bytes_received'] / 1e6:,.2f}", f"{e['bytes_sent'] / 1e6:,.2f}",
             f"{e['wall_s']:.1f}", "-" if e["epsilon"] is None else f"{e['epsilon']:.3f}",
             e["time"]] for e in t["last_rounds"]]  # fmt: skip
    out.print(table("last rounds", ["round", "steps", "tokens", "MB in", "MB out", "s",
                                    "epsilon", "time"], rows))  # fmt: skip


privacy_app = typer.Typer(
    help="The privacy ledger; `privacy reset` starts a new one.", invoke_without_command=True
)
app.add_typer(privacy_app, name="privacy")


@privacy_app.callback()
@user_errors
def privacy(
    ctx: typer.Context,
    folder: DirOpt = Path("."),
    json_out: Annotated[bool, typer.Option("--json", help="Last line: one JSON object.")] = False,
) -> None:
    """The privacy ledger: each DP round's noise, sample rate, steps, epsilon; budget left."""
    if ctx.invoked_subcommand is not None:
        return
    nf = load_node_file(folder / NODE_FILE)
    cfg = nf.settings.privacy
    ledger = PrivacyLedger.load(nf.settings.state_dir, nf.name, node_signer(nf.settings.key))
    spent = ledger.spent(cfg) if cfg else (ledger.entries[-1].epsilon if ledger.entries else 0.0)
    report = {
        "node": nf.name,
        "local_dp": cfg is not None,
        "unit": ledger.unit or "one training sequence (of the federation's seq_len tokens)",
        "epsilon_budget": cfg.epsilon if cfg else None,
        "delta": cfg.delta if cfg else None,
        "accountant": cfg.accountant if cfg else None,
        "epsilon_spent": spent,
        "epsilon_remaining": max(0.0, cfg.epsilon - spent) if cfg else None,
        "rounds": [asdict(e) for e in ledger.entries],
        "refusals": ledger.refusals,
        "resets": ledger.resets,
        "ledger": str(ledger.path),
    }
    out = console_for(json_out)
    out.print(table(f"{nf.name}: privacy ledger", ["round", "sigma", "sample rate", "steps",
                    "sequences", "epsilon after", "time"],
                    [[str(e.round), f"{e.noise_multiplier:.4g}", f"{e.sample_rate:.4g}",
                      str(e.steps), f"{e.records:,}", f"{e.epsilon:.4f}", e.time]
                     for e in ledger.entries]))  # fmt: skip
    for r in ledger.refusals:
        out.print(f"refused round {r['round']} at {r['time']}: {r['reason']}", markup=False)
    for r in ledger.resets:
        out.print(f"RESET at {r['time']}: {r['meaning']}", markup=False)
    if cfg is None:
        out.print("local DP is off for this node: node.yaml has no privacy section")
    else:
        out.print(f"epsilon spent {spent:.4f} of {cfg.epsilon:g} (delta {cfg.delta:g}, "
                  f"{cfg.accountant.upper()} accountant), {report['epsilon_remaining']:.4f} "
                  f"left; privacy unit: {report['unit']}")  # fmt: skip
    if json_out:
        emit_json(report)


@privacy_app.command("reset")
@user_errors
def privacy_reset(
    folder: DirOpt = Path("."),
    yes: Annotated[bool, typer.Option("--yes", help="Confirm that you understand the reset.")] = (
        False
    ),
) -> None:
    """Start a new privacy ledger in place of a missing or damaged one (recorded in it)."""
    nf = load_node_file(folder / NODE_FILE)
    if not yes:
        raise StepError(
            f"a reset means: {RESET_MEANING}. Restore the ledger from a backup if you can; "
            f"otherwise run `step-node privacy reset --dir {folder} --yes`"
        )
    with PrivacyLedger.locked(nf.settings.state_dir):
        ledger = PrivacyLedger.reset(nf.settings.state_dir, nf.name,
                                     node_signer(nf.settings.key))  # fmt: skip
    out = console_for(False)
    out.print(f"new privacy ledger {ledger.path}: {RESET_MEANING}", markup=False)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    os.umask(0o077)  # the node's state, logs and keys are its operator's alone
    app()
