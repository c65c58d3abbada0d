"""step-coord and step-node refuse bad input with one line (cause and fix), exit code 2, no
traceback, and leave every file as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from coordinator.cli import app as coord
from node.cli import app as node
from step_common.cli_common import package_version
from step_model.cli import app as model
from step_sim.cli import app as sim
from tests.local_federation import write_sim_config

runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def world(tmp_path: Path, tiny_corpus: Path) -> Path:
    """A federation with one enrolled node, and that node's folder."""
    assert (
        runner.invoke(coord, ["init", str(tmp_path / "fed"), "--host", "127.0.0.1"]).exit_code == 0
    )
    ca = tmp_path / "fed" / "tls" / "ca.crt"
    fed_key = tmp_path / "fed" / "tls" / "federation.pub"
    r = runner.invoke(node, ["init", str(tmp_path / "uni"), "--coordinator", "127.0.0.1:9092",
                             "--ca", str(ca), "--federation-key", str(fed_key),
                             "--data", str(tiny_corpus)])  # fmt: skip
    assert r.exit_code == 0, r.output
    pub = tmp_path / "uni" / "node.pub"
    r = runner.invoke(
        coord, ["enroll", "uni", "--public-key", str(pub), "--dir", str(tmp_path / "fed")]
    )
    assert r.exit_code == 0, r.output
    (tmp_path / "notes.txt").write_text("not a key")
    (tmp_path / "bad.yaml").write_text("federation:\n  strategy: fedsgd\n")
    (tmp_path / "tok.yaml").write_text("federation:\n  tokenizer: /no/tok.json\n")
    (tmp_path / "bpe.yaml").write_text("federation:\n  tokenizer: bpe:2048\n")
    insts = [{"name": "a", "languages": {"el": 1.0}}]
    write_sim_config(tmp_path / "sim.yaml", tiny_corpus, insts)
    over = [{"name": "a", "languages": {"el": 0.7}}, {"name": "b", "languages": {"el": 0.7}}]
    write_sim_config(tmp_path / "sim-over.yaml", tiny_corpus, over)
    (tmp_path / "sim-dp.yaml").write_text(
        (tmp_path / "sim.yaml").read_text() + "privacy: {epsilon: 8, rounds: 2}\n"
    )
    _tampered_checkpoint(tmp_path / "ckpt")
    damaged = tmp_path / "fed" / "run"  # a run whose only checkpoint was truncated
    shutil.copytree(tmp_path / "ckpt", damaged / "checkpoints" / "round-000001")
    (damaged / "LATEST").write_text("checkpoints/round-000001\n")
    shutil.copytree(tmp_path / "uni", tmp_path / "nokey")  # a node.yaml of before signed apps
    yaml_path = tmp_path / "nokey" / "node.yaml"
    lines = yaml_path.read_text().splitlines(keepends=True)
    yaml_path.write_text("".join(x for x in lines if not x.startswith("federation_key:")))
    shutil.copytree(tmp_path / "uni", tmp_path / "badstate")  # state_dir nobody can write
    yaml_path = tmp_path / "badstate" / "node.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("state_dir: state ", "state_dir: /proc/s "))
    return tmp_path


def _tampered_checkpoint(path: Path) -> None:
    from step_model.checkpoint import Checkpoint, initial_weights, save_checkpoint
    from step_model.config import preset
    from step_model.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    config = preset("debug").with_vocab(tok.vocab_size)
    save_checkpoint(path, Checkpoint(config, initial_weights(config, tok, 0), tok, {}))
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the weights
    (path / "model.safetensors").write_bytes(bytes(data))


def _fed(w: Path) -> str:
    return str(w / "fed")


def _ca(w: Path) -> str:
    return str(w / "fed" / "tls" / "ca.crt")


def _fed_pub(w: Path) -> str:
    return str(w / "fed" / "tls" / "federation.pub")


def _fk(w: Path) -> list[str]:
    return ["--federation-key", _fed_pub(w)]


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


# fmt: off
CASES: list[tuple[str, Callable[[Path], tuple[object, list[str]]], str]] = [
    ("init over a federation", lambda w: (coord, ["init", _fed(w)]), "already holds a federation"),
    ("init bad host", lambda w: (coord, ["init", str(w / "f2"), "--host", "a b"]), "neither an IP"),
    ("init rounds 0", lambda w: (coord, ["init", str(w / "f5"), "--rounds", "0"]),
     "federation.rounds = 0"),
    ("init min-nodes 0", lambda w: (coord, ["init", str(w / "f6"), "--min-nodes", "0"]),
     "federation.min_nodes = 0"),
    ("init inner-steps -5", lambda w: (coord, ["init", str(w / "f7"), "--inner-steps", "-5"]),
     "federation.inner_steps = -5"),
    ("init preset huge", lambda w: (coord, ["init", str(w / "f8"), "--preset", "huge"]),
     "federation.preset = 'huge'"),
    ("init onto a file", lambda w: (coord, ["init", str(w / "notes.txt")]),
     "not an empty folder"),
    ("init where nothing can be written", lambda w: (coord, ["init", "/proc/step-fed"]),
     "nothing was written"),
    ("node init with a scheme", lambda w: (node, ["init", str(w / "n7"), "--coordinator",
                                                  "https://h:9092", "--ca", _ca(w), *_fk(w)]),
     "has a scheme"),
    ("node init where nothing can be written",
     lambda w: (node, ["init", "/proc/step-node", "--coordinator", "h:1", "--ca", _ca(w),
                       *_fk(w)]),
     "nothing was written"),
    (
        "init bad address",
        lambda w: (coord, ["init", str(w / "f3"), "--fleet-address", "9092"]),
        "must be HOST:PORT",
    ),
    (
        "init same ports",
        lambda w: (coord, ["init", str(w / "f4"), "--fleet-address", "0.0.0.0:9093"]),
        "must differ",
    ),
    (
        "enroll missing key",
        lambda w: (coord, ["enroll", "x", "--public-key", str(w / "no.pub"), "--dir", _fed(w)]),
        "does not exist",
    ),
    (
        "enroll not a key",
        lambda w: (coord, ["enroll", "x", "--public-key", str(w / "notes.txt"), "--dir", _fed(w)]),
        "not an OpenSSH public key",
    ),
    (
        "enroll same key twice",
        lambda w: (
            coord,
            ["enroll", "y", "--public-key", str(w / "uni" / "node.pub"), "--dir", _fed(w)],
        ),
        "already enrolled as 'uni'",
    ),
    (
        "enroll bad name",
        lambda w: (
            coord,
            ["enroll", "a/b", "--public-key", str(w / "uni" / "node.pub"), "--dir", _fed(w)],
        ),
        "not allowed",
    ),
    ("revoke unknown", lambda w: (coord, ["revoke", "nobody", "--dir", _fed(w)]), "no node named"),
    ("accept-reset unknown", lambda w: (coord, ["accept-reset", "nobody", "--dir", _fed(w)]),
     "no node named"),
    (
        "status not a federation",
        lambda w: (coord, ["status", "--dir", str(w)]),
        "not a federation folder",
    ),
    ("stop when not running", lambda w: (coord, ["stop", "--dir", _fed(w)]), "nothing to stop"),
    (
        "start bad strategy",
        lambda w: (coord, ["start", "--dir", _fed(w), "--config", str(w / "bad.yaml")]),
        "federation.strategy",
    ),
    (
        "start missing tokenizer",
        lambda w: (coord, ["start", "--dir", _fed(w), "--config", str(w / "tok.yaml")]),
        "not found",
    ),
    (
        "start bpe tokenizer",
        lambda w: (coord, ["start", "--dir", _fed(w), "--config", str(w / "bpe.yaml")]),
        "would be trained",
    ),
    (
        "node init missing ca",
        lambda w: (
            node,
            ["init", str(w / "n2"), "--coordinator", "h:1", "--ca", str(w / "none.crt"), *_fk(w)],
        ),
        "does not exist",
    ),
    (
        "node init ca not pem",
        lambda w: (
            node,
            ["init", str(w / "n3"), "--coordinator", "h:1", "--ca", str(w / "notes.txt"), *_fk(w)],
        ),
        "not a PEM",
    ),
    (
        "node init bad address",
        lambda w: (
            node,
            ["init", str(w / "n4"), "--coordinator", "host", "--ca", _ca(w), *_fk(w)],
        ),
        "HOST:PORT",
    ),
    (
        "node init over a node",
        lambda w: (
            node,
            ["init", str(w / "uni"), "--coordinator", "h:1", "--ca", _ca(w), *_fk(w)],
        ),
        "already holds a node",
    ),
    (
        "node init missing federation key",
        lambda w: (node, ["init", str(w / "n5"), "--coordinator", "h:1", "--ca", _ca(w),
                          "--federation-key", str(w / "none.pub")]),
        "federation.pub the coordinator admin sent",
    ),
    (
        "node init federation key not ed25519",
        lambda w: (node, ["init", str(w / "n6"), "--coordinator", "h:1", "--ca", _ca(w),
                          "--federation-key", str(w / "uni" / "node.pub")]),
        "not an Ed25519 key",
    ),
    (
        "node start without federation key",
        lambda w: (node, ["start", "--dir", str(w / "nokey")]),
        "names no federation_key",
    ),
    ("start --from a tampered checkpoint",
     lambda w: (coord, ["start", "--dir", _fed(w), "--from", str(w / "ckpt")]),
     "cannot be used: checkpoint file"),
    ("start --from nothing",
     lambda w: (coord, ["start", "--dir", _fed(w), "--from", str(w / "no")]), "does not exist"),
    ("resume with no checkpoint that verifies",
     lambda w: (coord, ["start", "--dir", _fed(w), "--resume"]),
     "restore one from a backup and pass it with `step-coord start --resume --from"),
    (
        "verify with a node key",
        lambda w: (model, ["verify", str(w / "ckpt"), "--federation-key",
                           str(w / "uni" / "node.pub")]),
        "not an Ed25519 key",
    ),
    (
        "verify a tampered checkpoint",
        lambda w: (model, ["verify", str(w / "ckpt"), "--federation-key", _fed_pub(w)]),
        "does not match its sha256",
    ),
    ("check without node.yaml", lambda w: (node, ["check", "--dir", str(w)]), "step-node init"),
    ("check an unwritable state_dir", lambda w: (node, ["check", "--dir", str(w / "badstate")]),
     "state_dir /proc/s is not writable"),
    ("privacy without node.yaml", lambda w: (node, ["privacy", "--dir", str(w)]), "step-node init"),
    ("workers of a one-host node", lambda w: (node, ["workers", "--dir", str(w / "uni")]),
     "`step-node start` starts this node's workers"),
    ("privacy reset unconfirmed", lambda w: (node, ["privacy", "reset", "--dir", str(w / "uni")]),
     "a reset means"),
    (
        "sim shares over 1",
        lambda w: (sim, ["--config", str(w / "sim-over.yaml"), "--out", str(w / "o1")]),
        "add up to more than 1",
    ),
    (
        "sim missing config",
        lambda w: (sim, ["--config", str(w / "none.yaml"), "--out", str(w / "o2")]),
        "not found",
    ),
    (
        "sim privacy without delta",
        lambda w: (sim, ["--config", str(w / "sim-dp.yaml"), "--out", str(w / "o3")]),
        "privacy.delta is missing",
    ),
    (
        "sim tampered init checkpoint",
        lambda w: (sim, ["--config", str(w / "sim.yaml"), "--out", str(w / "o4"),
                         "--init-from", str(w / "ckpt")]),
        "does not match its sha256",
    ),
    (
        "sim resume nothing",
        lambda w: (sim, ["--config", str(w / "sim.yaml"), "--out", str(w / "o5"), "--resume"]),
        "holds no step-sim run",
    ),
    (
        "sim bad rounds",
        lambda w: (sim, ["--config", str(w / "sim.yaml"), "--out", str(w / "o6"),
                         "--rounds", "0"]),
        "federation.rounds",
    ),
    ("start without node.yaml", lambda w: (node, ["start", "--dir", str(w)]), "step-node init"),
]
# fmt: on


@pytest.mark.parametrize(("name", "make", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(
    world: Path, name: str, make: Callable[[Path], tuple[object, list[str]]], needle: str
) -> None:
    before = snapshot(world)
    cli, args = make(world)
    result = runner.invoke(cli, args)  # type: ignore[arg-type]
    assert result.exit_code == 2, result.output
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot(world) == before


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("languages: null ", "languages: [zz] "), "zz"),
        (("languages: null ", "languages: de "), "list of codes"),
        (('coordinator: "127.0.0.1:9092"', "coordinator: nowhere"), "HOST:PORT"),
        (("threads: 0 ", "threads: -1 "), "resources.threads"),
        (("device: auto ", "device: gpu0 "), "resources.device"),
        (("gpus: 1 ", "gpus: 0 "), "resources.gpus"),
        (("precision: auto ", "precision: fp16 "), "resources.precision"),
        (("precision: auto ", "precision: bf16 "), "apply to torchrun workers"),
        (("sharding: auto ", "sharding: replicate "), "apply to torchrun workers"),
        (("sharding: auto ", "sharding: zero3 "), "resources.sharding"),
        (("hosts: 1 ", "hosts: 2 "), "set resources.rendezvous to HOST:PORT"),
        (("rendezvous: null ", "rendezvous: 10.0.0.1:29400 "), "applies to workers on several"),
        (("hosts: 1 ", "hosts: 2 ", "rendezvous: null ", "rendezvous: here "), "HOST:PORT"),
        (("holdout_fraction: 0.05", "holdout_fraction: 2"), "holdout_fraction"),
        (("state_dir: state", "state_dir: state\nsecret: 1"), "unknown key secret"),
        (("privacy: null", "privacy: {epsilon: 8, rounds: 3}"), "privacy.delta is missing"),
        (("privacy: null", "privacy: {epsilon: -1, delta: 1.0e-6, rounds: 3}"), "privacy.epsilon"),
        (("privacy: null", "privacy: {epsilon: 8, delta: 1.0e-6}"), "exactly one of"),
        (("privacy: null", "privacy: {epsilon: 8, delta: 2, rounds: 3}"), "privacy.delta"),
    ],
)
def test_bad_node_yaml(world: Path, edit: tuple[str, ...], needle: str) -> None:
    path = world / "uni" / "node.yaml"
    for old, new in zip(edit[::2], edit[1::2], strict=True):
        _edit(path, old, new)
    before = snapshot(world)
    result = runner.invoke(node, ["check", "--dir", str(world / "uni")])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert snapshot(world) == before


def test_check_reports_the_memory_a_round_needs_and_refuses_what_cannot_fit(world: Path) -> None:
    """--preset: the per-device plan (node/memory_plan.py); a `7b` model on one CPU worker of
    this machine cannot fit, `debug` can; more workers shard the persistent part."""
    folder = str(world / "uni")
    ok = runner.invoke(node, ["check", "--dir", folder, "--preset", "debug", "--json"])
    assert ok.exit_code == 0, ok.output
    memory = json.loads(ok.stdout.strip().splitlines()[-1])["memory"]
    assert memory["fits"] and memory["workers"] == 1 and memory["precision"] == "fp32"
    params = memory["bytes_per_device"]["weights (fp32)"] / 4
    assert memory["bytes_per_device"]["AdamW moments (fp32)"] == 8 * params
    before = snapshot(world)
    big = runner.invoke(node, ["check", "--dir", folder, "--preset", "7b"])
    assert big.exit_code == 2 and "activation_checkpointing" in big.stderr, big.output
    assert snapshot(world) == before
    _edit(world / "uni" / "node.yaml", "gpus: 1 ", "gpus: 4 ")
    four = runner.invoke(node, ["check", "--dir", folder, "--preset", "debug", "--json"])
    sharded = json.loads(four.stdout.strip().splitlines()[-1])["memory"]
    assert sharded["workers"] == 4
    assert (
        sharded["bytes_per_device"]["weights (fp32)"] * 4
        >= params * 4
        > (sharded["bytes_per_device"]["weights (fp32)"] * 3)
    )


def test_check_names_an_unreadable_file(world: Path, tmp_path: Path) -> None:
    data = tmp_path / "own"
    data.mkdir()
    (data / "de.txt").write_bytes(b"Guten Tag \xff\xfe kaputt\n")
    _edit(world / "uni" / "node.yaml", str(world / "uni" / ".."), "")
    path = world / "uni" / "node.yaml"
    text = "\n".join(
        f"data: {data}" if line.startswith("data:") else line
        for line in path.read_text().splitlines()
    )
    path.write_text(text + "\n")
    result = runner.invoke(node, ["check", "--dir", str(world / "uni")])
    assert result.exit_code == 2
    assert "de.txt" in result.stderr and "UTF-8" in result.stderr


def test_check_reports_bytes_and_tokens(world: Path) -> None:
    _edit(world / "uni" / "node.yaml", "languages: null ", "languages: [de, el] ")
    result = runner.invoke(node, ["check", "--dir", str(world / "uni"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["languages"]) == {"de", "el"}
    el = report["languages"]["el"]
    assert el["train_tokens"] == el["train_bytes"] > 0  # byte tokenizer: one token per byte
    assert report["fingerprint"].startswith("SHA256:")
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # resources.device: auto
    assert report["device"].startswith(expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_at_check(world: Path) -> None:
    _edit(world / "uni" / "node.yaml", "device: auto ", "device: cuda ")
    result = runner.invoke(node, ["check", "--dir", str(world / "uni")])
    assert result.exit_code == 2, result.output
    assert "no CUDA GPU is visible" in result.stderr


def test_privacy_shows_the_ledger_and_refuses_a_tampered_one(world: Path) -> None:
    from node.ledger import PrivacyLedger
    from node.privacy_config import privacy_from_dict
    from step_fed.identity import NodeSigner

    _edit(world / "uni" / "node.yaml", "privacy: null", "privacy: {epsilon: 4, delta: 1.0e-6, "
          "noise_multiplier: 1.0}")  # fmt: skip
    cfg = privacy_from_dict({"epsilon": 4, "delta": 1e-6, "noise_multiplier": 1.0}, "t")
    assert cfg is not None
    signer = NodeSigner(world / "uni" / "node.key")  # a deployed node's ledger is signed
    ledger = PrivacyLedger.load(world / "uni" / "state", "uni", signer)
    for r in (1, 2):
        ledger.record(ledger.plan(cfg, r, 8, 50, 10_000), "one training sequence of 128 tokens")
    result = runner.invoke(node, ["privacy", "--dir", str(world / "uni"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert report["epsilon_spent"] == ledger.spent(cfg) == report["rounds"][1]["epsilon"]
    assert report["epsilon_remaining"] == 4 - report["epsilon_spent"]
    assert report["unit"] == "one training sequence of 128 tokens"
    path = world / "uni" / "state" / "privacy" / "ledger.json"
    _edit(path, '"steps": 50', '"steps": 5')
    before = snapshot(world)
    result = runner.invoke(node, ["privacy", "--dir", str(world / "uni")])
    assert result.exit_code == 2 and "SHA-256 mismatch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and snapshot(world) == before


def test_nodes_lists_enrolled_and_revoked(world: Path) -> None:
    assert runner.invoke(coord, ["revoke", "uni", "--dir", _fed(world)]).exit_code == 0
    result = runner.invoke(coord, ["nodes", "--dir", _fed(world), "--json"])
    rows = json.loads(result.stdout.strip().splitlines()[-1])["nodes"]
    assert [(r["name"], r["status"], r["connected"]) for r in rows] == [("uni", "revoked", False)]


def test_tracebacks_never_print_locals(tmp_path: Path) -> None:
    """A crash (here: a bug while init writes the CA) prints no local variable: a local could
    hold private key bytes. (A full disk is a clear one-line error: see the table above.)"""
    for cli in (coord, node, sim, model):
        assert cli.pretty_exceptions_show_locals is False
    crash = (
        "import sys, coordinator.cli as c\n"
        "def broken(*args, **kwargs):\n"
        "    secret = 'BEGIN-PRIVATE-KEY-BYTES'\n"
        "    raise RuntimeError('a bug while writing the CA')\n"
        "c.create_tls = broken\n"
        f"sys.argv = ['step-coord', 'init', {str(tmp_path / 'fed')!r}]\n"
        "c.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "_TYPER_STANDARD_TRACEBACK"}
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True,
                          env={**env, "COLUMNS": "200"}, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "a bug while writing the CA" in done.stderr
    assert "BEGIN-PRIVATE-KEY-BYTES" not in done.stdout + done.stderr


def test_created_files_are_private(tmp_path: Path, tiny_corpus: Path) -> None:
    """step-coord and step-node create everything 0600/0700 (umask 077)."""
    bin_dir = Path(sys.executable).parent
    fed, uni = tmp_path / "fed", tmp_path / "uni"
    subprocess.run([bin_dir / "step-coord", "init", fed], check=True, capture_output=True)
    subprocess.run([bin_dir / "step-node", "init", uni, "--coordinator", "h:1", "--ca",
                    fed / "tls" / "ca.crt", "--federation-key", fed / "tls" / "federation.pub",
                    "--data", tiny_corpus], check=True, capture_output=True)  # fmt: skip
    for root in (fed, uni):
        for p in [root, *root.rglob("*")]:
            assert p.stat().st_mode & 0o077 == 0, f"{p} is readable by others"


def test_node_yaml_encoding_reads_legacy_text(tmp_path: Path, step35: Path) -> None:
    """A node whose files are Greek in Windows-1253: `step-node check` names the encoding;
    with `encoding: cp1253` in node.yaml it reads them."""
    data = tmp_path / "data"
    data.mkdir()
    text = (step35 / "train" / "el.txt").read_text(encoding="utf-8")[:20_000]
    (data / "el.txt").write_bytes(text.encode("cp1253", errors="replace"))
    fed = tmp_path / "fed"
    assert runner.invoke(coord, ["init", str(fed)]).exit_code == 0
    r = runner.invoke(node, ["init", str(tmp_path / "uni"), "--coordinator", "h:1", "--ca",
                             str(fed / "tls" / "ca.crt"), "--federation-key",
                             str(fed / "tls" / "federation.pub"), "--data", str(data)])  # fmt: skip
    assert r.exit_code == 0, r.output
    check = runner.invoke(node, ["check", "--dir", str(tmp_path / "uni")])
    assert check.exit_code == 2 and "Greek text in WINDOWS-1253" in check.stderr
    yaml_path = tmp_path / "uni" / "node.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("encoding: null ", "encoding: cp1253 "))
    check = runner.invoke(node, ["check", "--dir", str(tmp_path / "uni"), "--json"])
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout.strip().splitlines()[-1])["languages"]["el"]["train_bytes"] > 0


@pytest.mark.parametrize(
    ("cli", "args"),
    [(coord, ["init"]), (node, ["start"]), (model, ["verify"]), (sim, []),
     (coord, []), (node, []), (model, ["tokenizer", "train"])],
)  # fmt: skip
def test_every_command_line_answers_version_and_h(cli: object, args: list[str]) -> None:
    helped = runner.invoke(cli, [*args, "-h"])  # type: ignore[arg-type]
    assert helped.exit_code == 0 and "Usage:" in helped.stdout, helped.output
    if not args or cli is sim:
        shown = runner.invoke(cli, ["--version"])  # type: ignore[arg-type]
        assert shown.exit_code == 0, shown.output
        assert shown.stdout.strip().split()[-1] == package_version()


def test_privacy_reset_after_a_deleted_ledger(world: Path) -> None:
    state = world / "uni" / "state"
    (state / "privacy").mkdir(parents=True)
    (state / ".privacy-ledger").write_text("uni: a privacy ledger is kept\n")  # it kept one
    shown = runner.invoke(node, ["privacy", "--dir", str(world / "uni")])
    assert shown.exit_code == 2 and "is missing" in shown.stderr and "privacy reset" in shown.stderr
    done = runner.invoke(node, ["privacy", "reset", "--dir", str(world / "uni"), "--yes"])
    assert done.exit_code == 0, done.output
    report = runner.invoke(node, ["privacy", "--dir", str(world / "uni"), "--json"])
    assert report.exit_code == 0, report.output
    resets = json.loads(report.stdout.strip().splitlines()[-1])["resets"]
    assert len(resets) == 1 and "not undone" in resets[0]["meaning"]
