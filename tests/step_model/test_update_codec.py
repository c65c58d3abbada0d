import pytest
import torch

from step_model.protocol import RoundConfig
from step_model.update_codec import decode, encode, encoded_bytes


def update() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"w": torch.randn(16, 8) * 1e-3, "norm": torch.randn(8) * 1e-4}


@pytest.mark.parametrize(
    ("encoding", "size", "tol"), [("fp32", 4, 0.0), ("bf16", 2, 4e-3), ("int8", 1, 1 / 254)]
)
def test_round_trip_error_and_size(encoding: str, size: int, tol: float) -> None:
    x = update()
    enc = encode(x, encoding)
    back = decode(enc, encoding, {k: v.shape for k, v in x.items()})
    for k, v in x.items():
        # within tol of the row's largest magnitude (int8: half a quantisation step)
        assert (back[k] - v).abs().max() <= tol * v.abs().max() + 1e-12, (encoding, k)
    scales = 4 * (16 + 1) if encoding == "int8" else 0
    assert encoded_bytes(enc) == size * (16 * 8 + 8) + scales


@pytest.mark.parametrize("damage", ["missing", "shape", "dtype", "extra"])
def test_malformed_updates_are_refused(damage: str) -> None:
    enc = encode(update(), "int8")
    if damage == "missing":
        del enc["w"]
    elif damage == "shape":
        enc["w"] = enc["w"][:8]
    elif damage == "dtype":
        enc["w"] = enc["w"].float()
    else:
        enc["evil"] = torch.zeros(1)
    with pytest.raises(ValueError):
        decode(enc, "int8", {"w": torch.Size([16, 8]), "norm": torch.Size([8])})


def test_round_config_survives_the_wire_and_refuses_bad_values() -> None:
    cfg = RoundConfig(
        round=3,
        total_rounds=10,
        inner_steps=50,
        inner_lr=3e-3,
        min_lr_ratio=0.1,
        warmup_steps=10,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        grad_clip=1.0,
        batch_size=8,
        seq_len=128,
        alpha=0.3,
        seed=0,
        update_encoding="int8",
        model_config="{}",
        tokenizer="{}",
        tokenizer_sha256="ab",
    )
    wire = cfg.to_wire()
    assert RoundConfig.from_wire(wire) == cfg
    with pytest.raises(ValueError, match="protocol version"):
        RoundConfig.from_wire({**wire, "protocol-version": 99})
    with pytest.raises(ValueError, match="lacks 'inner-steps'"):
        RoundConfig.from_wire({k: v for k, v in wire.items() if k != "inner-steps"})
    with pytest.raises(ValueError, match="'round' is str"):
        RoundConfig.from_wire({**wire, "round": "3"})
