"""The federation key's signatures: what Flower's SuperNode accepts, and signed checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from flwr.supercore.fab import Fab
from flwr.supernode.start_client_internal import _verify_fab
from typer.testing import CliRunner

from step_common.signatures import create_signing_key, load_signing_key, read_verify_key, sign_file
from step_fed.app_signatures import fab_verifications, trusted_entities_yaml
from step_model.checkpoint import SUMS, Checkpoint, save_checkpoint
from step_model.cli import app as model_cli
from step_model.config import preset
from step_model.tokenizer import ByteTokenizer

FAB = b"PK\x03\x04 a Flower App archive"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(our folder, another federation's folder), each with federation.key / .pub."""
    create_signing_key(tmp_path / "ours", "ours")
    create_signing_key(tmp_path / "theirs", "theirs")
    return tmp_path / "ours", tmp_path / "theirs"


def _trusted(folder: Path) -> dict[str, str]:
    text = trusted_entities_yaml(read_verify_key(folder / "federation.pub"))
    loaded: dict[str, str] = yaml.safe_load(text)
    return loaded


def test_flower_accepts_our_signature_and_nothing_else(keys: tuple[Path, Path]) -> None:
    ours, theirs = keys
    key = load_signing_key(ours / "federation.key")
    signed = Fab("h", FAB, fab_verifications(key, FAB))
    assert _verify_fab(signed, _trusted(ours))  # Flower's own check, as the SuperNode runs it
    assert not _verify_fab(signed, _trusted(theirs))  # a node of another federation refuses
    tampered = Fab("h", FAB + b"evil", signed.verifications)
    assert not _verify_fab(tampered, _trusted(ours))
    assert not _verify_fab(Fab("h", FAB, {}), _trusted(ours))  # unsigned


def test_private_key_is_private(keys: tuple[Path, Path]) -> None:
    ours, _ = keys
    assert (ours / "federation.key").stat().st_mode & 0o777 == 0o600
    assert json.dumps(_trusted(ours))  # the public half is plain text to hand out


def _checkpoint(folder: Path) -> Path:
    cfg = preset("debug")
    weights = {"w": torch.zeros(2)}
    save_checkpoint(folder, Checkpoint(cfg, weights, ByteTokenizer(), {"step": 1}, None))
    return folder


def test_step_model_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    ours, theirs = keys
    runner = CliRunner()
    ckpt = _checkpoint(tmp_path / "ckpt")
    args = ["verify", str(ckpt), "--federation-key", str(ours / "federation.pub")]

    missing = runner.invoke(model_cli, args)
    assert missing.exit_code == 2 and "SHA256SUMS.sig is missing" in missing.stderr

    sign_file(load_signing_key(ours / "federation.key"), ckpt / SUMS)
    ok = runner.invoke(model_cli, [*args, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["verified"] is True

    other = runner.invoke(model_cli, [args[0], args[1], args[2], str(theirs / "federation.pub")])
    assert other.exit_code == 2 and "is not signed by the federation key" in other.stderr

    (ckpt / "extra.py").write_text("import os")  # a file the signature does not cover
    extra = runner.invoke(model_cli, args)
    assert extra.exit_code == 2 and "extra.py" in extra.stderr
    (ckpt / "extra.py").unlink()

    sums = (ckpt / SUMS).read_text()
    (ckpt / SUMS).write_text(sums.replace("state.json", "state.jsonx"))  # edit the signed list
    edited = runner.invoke(model_cli, args)
    assert edited.exit_code == 2
