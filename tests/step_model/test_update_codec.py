import pytest
import torch

from step_model.protocol import RoundConfig
from step_model.update_codec import QUANTISED, decode, encode, encoded_bytes


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


@pytest.mark.parametrize(("encoding", "per_byte"), [("int4", 2), ("int2", 4)])
def test_packed_encodings_size_and_levels(encoding: str, per_byte: int) -> None:
    torch.manual_seed(1)
    x = {"w": torch.randn(16, 9), "norm": torch.randn(7)}  # odd sizes: the last byte is padded
    enc = encode(x, encoding)
    shapes = {k: v.shape for k, v in x.items()}
    back = decode(enc, encoding, shapes)
    assert enc["w"].dtype == torch.uint8 and enc["w"].numel() == -(-16 * 9 // per_byte)
    assert encoded_bytes(enc) == -(-144 // per_byte) + -(-7 // per_byte) + 4 * (16 + 1)
    level = QUANTISED[encoding]
    for k, v in x.items():
        rows = v.reshape(v.shape[0], -1) if v.dim() == 2 else v.reshape(1, -1)
        got = back[k].reshape(rows.shape)
        scale = enc[k + "#scale"][:, None]
        steps = got / scale * level  # whole numbers in -level..level
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert float(steps.abs().max()) <= level + 1e-4
        if encoding == "int4":  # absmax: within half a step of every value
            assert float((got - rows).abs().max()) <= float(scale.max()) / 14 + 1e-6
        else:  # ternary at the row's mean |x|: the sign survives wherever a value is kept
            kept = got != 0
            assert bool((torch.sign(got[kept]) == torch.sign(rows[kept])).all())
            assert torch.allclose(enc[k + "#scale"], rows.abs().mean(dim=1))


def test_packed_values_out_of_range_are_refused() -> None:
    enc = encode({"w": torch.randn(4, 4)}, "int4")
    enc["w"][0] = 0xFF  # 15 is not a level of int4 (-7..7 is stored as 0..14)
    with pytest.raises(ValueError, match="out of range"):
        decode(enc, "int4", {"w": torch.Size([4, 4])})


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
