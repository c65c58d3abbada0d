from pathlib import Path

import pytest
import torch

from step_common.errors import StepError
from step_model import checkpoint as ck
from step_model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, save_in_run
from step_model.config import preset
from step_model.model import Transformer
from step_model.tokenizer import ByteTokenizer


def make_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    model = Transformer(preset("debug"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randint(0, 259, (2, 8))).sum().backward()
    opt.step()
    return Checkpoint(
        preset("debug"), model.state_dict(), ByteTokenizer(), {"step": 1}, opt.state_dict()
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    save_checkpoint(tmp_path / "c", ckpt)
    back = load_checkpoint(tmp_path / "c")
    assert back.config == ckpt.config and back.state == {"step": 1}
    assert all(torch.equal(back.weights[k], v) for k, v in ckpt.weights.items())
    assert back.optimizer is not None and ckpt.optimizer is not None
    assert back.optimizer["param_groups"][0]["betas"] == (0.9, 0.95)
    s0, s1 = ckpt.optimizer["state"][0], back.optimizer["state"][0]
    assert torch.equal(s0["exp_avg_sq"], s1["exp_avg_sq"])
    model = Transformer(back.config)
    model.load_state_dict(back.weights)
    torch.optim.AdamW(model.parameters()).load_state_dict(back.optimizer)


def test_the_folder_verifies_with_sha256sum_format(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c", make_checkpoint())
    lines = (tmp_path / "c" / "SHA256SUMS").read_text().splitlines()
    names = {line.split("  ")[1] for line in lines}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "state.json",
        "optimizer.safetensors",
        "optimizer.json",
    } == names
    assert all(len(line.split("  ")[0]) == 64 for line in lines)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "sums"])
def test_tampered_or_truncated_checkpoints_are_refused(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path / "c", make_checkpoint())
    f = tmp_path / "c" / "model.safetensors"
    data = f.read_bytes()
    if damage == "flip":
        f.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    elif damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        f.unlink()
    else:
        (tmp_path / "c" / "SHA256SUMS").unlink()
    with pytest.raises(StepError, match=r"model\.safetensors|SHA256SUMS"):
        load_checkpoint(tmp_path / "c")


def test_a_failed_save_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c", make_checkpoint())
    assert list(tmp_path.iterdir()) == []


def test_run_folder_points_at_the_newest_and_keeps_two(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    for step in (1, 2, 3):
        ckpt.state = {"step": step}
        save_in_run(tmp_path, f"step-{step:08d}", ckpt, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000003",
    ]
    assert load_checkpoint(tmp_path).state == {"step": 3}


def test_neither_checkpoint_nor_run_folder(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="neither a checkpoint folder"):
        load_checkpoint(tmp_path)


def test_existing_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    with pytest.raises(StepError, match="already exists"):
        save_checkpoint(tmp_path / "c", make_checkpoint())
