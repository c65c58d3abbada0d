import pytest
import torch

from step_fed.protocol import RoundConfig
from step_fed.update_codec import QUANTISED, decode, encode, encoded_bytes, row_scales
from tests.factories import round_config


def update() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"w": torch.randn(16, 8) * 1e-3, "norm": torch.randn(8) * 1e-4}


@pytest.mark.parametrize(
    ("encoding", "size", "tol"),
    [("fp32", 4, 0.0), ("bf16", 2, 4e-3), ("int8", 1, (1 + 2**-8) / 254)],
)
def test_round_trip_error_and_size(encoding: str, size: int, tol: float) -> None:
    x = update()
    enc = encode(x, encoding)
    back = decode(enc, encoding, {k: v.shape for k, v in x.items()})
    for k, v in x.items():
        # within tol of the row's largest magnitude (int8: half a quantisation step of the
        # bf16-rounded scale)
        assert (back[k] - v).abs().max() <= tol * v.abs().max() + 1e-12, (encoding, k)
    scales = 2 * (16 + 1) if encoding == "int8" else 0  # a bf16 scale per row
    assert encoded_bytes(enc) == size * (16 * 8 + 8) + scales


@pytest.mark.parametrize(
    ("encoding", "per", "width"),
    [("int4", 2, 1), ("int3", 8, 3), ("int2", 5, 1), ("int1", 8, 1)],
)
def test_packed_encodings_size_and_levels(encoding: str, per: int, width: int) -> None:
    """``per`` values travel in ``width`` bytes."""
    torch.manual_seed(1)
    x = {"w": torch.randn(16, 9), "norm": torch.randn(7)}  # odd sizes: the last group is padded
    enc = encode(x, encoding)
    shapes = {k: v.shape for k, v in x.items()}
    back = decode(enc, encoding, shapes)
    assert enc["w"].dtype == torch.uint8 and enc["w"].numel() == -(-16 * 9 // per) * width
    body = (-(-144 // per) + -(-7 // per)) * width
    assert encoded_bytes(enc) == body + 2 * (16 + 1)  # + a bf16 scale per row
    level = QUANTISED[encoding]
    for k, v in x.items():
        rows = v.reshape(v.shape[0], -1) if v.dim() == 2 else v.reshape(1, -1)
        got = back[k].reshape(rows.shape)
        scale = row_scales(enc[k + "#scale"])[:, None]
        steps = got / scale * level  # whole numbers in -level..level
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert float(steps.abs().max()) <= level + 1e-4
        if encoding in ("int4", "int3"):  # absmax: within half a step of every value
            bound = float(rows.abs().max()) * (1 + 2**-8) / (2 * level)
            assert float((got - rows).abs().max()) <= bound + 1e-6
        else:  # at the row's mean |x|: the sign survives wherever a value is kept
            kept = got != 0
            assert bool((torch.sign(got[kept]) == torch.sign(rows[kept])).all())
            mean = rows.abs().mean(dim=1)
            assert torch.allclose(row_scales(enc[k + "#scale"]), mean, rtol=2**-8)
        if encoding == "int1":  # every value kept, as its sign at the row's mean |x|
            assert bool((got.abs() == scale).all())


def test_int1_error_feedback_conserves_the_update() -> None:
    """Signs lose magnitudes, not mass: over rounds of the same update with error feedback,
    sent + residual is exactly what was accumulated, and the residual stops growing (what the
    signs hold back goes out later), so the mean of what was sent tends to the update."""
    torch.manual_seed(2)
    x = torch.randn(32, 64) * 1e-3
    shapes = {"w": x.shape}
    residual, sent, largest = torch.zeros_like(x), torch.zeros_like(x), []
    for _ in range(400):
        acc = x + residual
        back = decode(encode({"w": acc}, "int1"), "int1", shapes)["w"]
        residual, sent = acc - back, sent + back
        largest.append(float(residual.abs().max()))
    assert torch.allclose(sent + residual, 400 * x, atol=1e-5)  # conservation
    assert max(largest[200:]) <= 1.1 * max(largest[:200])  # bounded, not drifting
    assert float((sent / 400 - x).abs().max()) < 0.1 * float(x.abs().max())


@pytest.mark.parametrize(
    ("encoding", "per", "width"), [("int4", 2, 1), ("int3", 8, 3), ("int2", 5, 1)]
)
def test_packed_values_out_of_range_are_refused(encoding: str, per: int, width: int) -> None:
    enc = encode({"w": torch.randn(4, 8)}, encoding)
    shape = {"w": torch.Size([4, 8])}
    levels = 2 * QUANTISED[encoding] + 1

    def first_group(number: int) -> None:  # little-endian, as the packer writes it
        enc["w"][:width] = torch.tensor([(number >> (8 * j)) & 0xFF for j in range(width)])

    first_group(levels**per)  # the smallest group no encoder writes
    with pytest.raises(ValueError, match="out of range"):
        decode(enc, encoding, shape)
    first_group(levels**per - 1)  # the largest one it does: every value at its top level
    back = decode(enc, encoding, shape)["w"].reshape(-1)
    top = float(row_scales(enc["w#scale"])[0])
    assert torch.allclose(back[: min(per, 8)], torch.tensor(top))


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
    cfg = round_config(round=3, total_rounds=10, inner_steps=50, inner_lr=3e-3, warmup_steps=10,
                       weight_decay=0.1, batch_size=8, seq_len=128, update_encoding="int8",
                       tokenizer="{}", tokenizer_sha256="ab")  # fmt: skip
    wire = cfg.to_wire()
    assert RoundConfig.from_wire(wire) == cfg
    with pytest.raises(ValueError, match="protocol version"):
        RoundConfig.from_wire({**wire, "protocol-version": 99})
    with pytest.raises(ValueError, match="lacks 'inner-steps'"):
        RoundConfig.from_wire({k: v for k, v in wire.items() if k != "inner-steps"})
    with pytest.raises(ValueError, match="round = '3': input should be a valid integer"):
        RoundConfig.from_wire({**wire, "round": "3"})
    with pytest.raises(ValueError, match="batch_size = True: input should be a valid integer"):
        RoundConfig.from_wire({**wire, "batch-size": True})
    # the bounds are the federation's (step_model/schedule.py), checked by the node too
    with pytest.raises(ValueError, match=r"beta2 = 1\.5: input should be less than 1"):
        RoundConfig.from_wire({**wire, "beta2": 1.5})
