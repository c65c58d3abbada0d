"""An update kept encoded reads exactly as a whole decode, tensor by tensor."""

from __future__ import annotations

import pytest
import torch

from coordinator.encoded_update import EncodedUpdate
from step_fed.update_codec import decode, encode

SHAPES = {"emb": torch.Size([6, 4]), "w": torch.Size([4, 5]), "norm": torch.Size([4])}


def update() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}


@pytest.mark.parametrize("encoding", ["fp32", "bf16", "int8", "int4", "int3", "int2", "int1"])
def test_reading_tensor_by_tensor_gives_the_whole_decode(encoding: str) -> None:
    wire = encode(update(), encoding)
    lazy = EncodedUpdate(wire, encoding, SHAPES)
    whole = decode(wire, encoding, SHAPES)
    assert list(lazy) == list(SHAPES)
    for name in SHAPES:
        assert torch.equal(lazy[name], whole[name])
        assert torch.equal(lazy.scaled(0.5)[name], whole[name] * 0.5)


def test_seen_rows_are_put_back_in_place() -> None:
    seen = torch.tensor([True, False, True, True, False, False])
    full = update()
    sent = {**full, "emb": full["emb"][seen]}
    lazy = EncodedUpdate(encode(sent, "int8"), "int8", SHAPES, seen, ("emb",))
    rows = decode(encode(sent, "int8"), "int8", {**SHAPES, "emb": torch.Size([3, 4])})["emb"]
    assert torch.equal(lazy["emb"][seen], rows)
    assert torch.equal(lazy["emb"][~seen], torch.zeros(3, 4))


def test_a_malformed_tensor_is_refused_when_read() -> None:
    wire = encode(update(), "int8")
    wire["w"] = wire["w"][:2]
    lazy = EncodedUpdate(wire, "int8", SHAPES)  # keys are right: checked at once
    with pytest.raises(ValueError, match=r"w: got torch\.int8"):
        lazy["w"]
    with pytest.raises(ValueError, match="update keys differ"):
        EncodedUpdate({k: v for k, v in wire.items() if k != "norm"}, "int8", SHAPES)
