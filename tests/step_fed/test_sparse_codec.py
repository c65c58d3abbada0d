"""Sparse encodings (top<K>-sign, top<K>-int4): exact wire sizes, the K largest of each chunk
sent, corrupted wires refused, and error feedback that loses nothing, up and down."""

from __future__ import annotations

import pytest
import torch

from coordinator.broadcast import DeltaBroadcast
from node.state import InnerState
from node.trainer import with_error_feedback
from step_fed.sparse_codec import CHUNK, sparse_bytes_per_chunk
from step_fed.update_codec import apply_delta, decode, encode, encoded_bytes

SHAPES = {"w": torch.Size([300, 70]), "norm": torch.Size([70])}  # 21000 values: 83 chunks


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 1e-3 for k, s in SHAPES.items()}


@pytest.mark.parametrize(
    ("encoding", "per_chunk"), [("top8-sign", 8 + 1 + 2), ("top4-int4", 4 + 2 + 2),
                                ("top32-sign", 32 + 4 + 2), ("top2-int4", 2 + 1 + 2)],
)  # fmt: skip
def test_wire_bytes_are_exact(encoding: str, per_chunk: int) -> None:
    """K one-byte positions, the packed values and a bf16 scale per chunk of 256: nothing else."""
    enc = encode(_update(), encoding)
    assert sparse_bytes_per_chunk(encoding) == per_chunk
    chunks = -(-300 * 70 // CHUNK) + 1  # 82 whole chunks, a padded one, the norm vector's
    assert chunks == 84 and encoded_bytes(enc) == chunks * per_chunk
    assert set(enc) == {f"{n}{s}" for n in SHAPES for s in ("", "#values", "#scale")}


@pytest.mark.parametrize("k", [2, 8, 32])
def test_each_chunk_sends_its_k_largest_with_their_signs(k: int) -> None:
    x = _update(1)
    back = decode(encode(x, f"top{k}-sign"), f"top{k}-sign", SHAPES)
    flat, got = x["w"].reshape(-1), back["w"].reshape(-1)
    for start in range(0, 256 * 82, 256):  # the whole chunks
        chunk, sent = flat[start : start + 256], got[start : start + 256]
        largest = set(chunk.abs().topk(k).indices.tolist())
        assert set(sent.nonzero().flatten().tolist()) == largest
        picked = sorted(largest)
        assert torch.equal(sent[picked].sign(), chunk[picked].sign())
        mean = float(chunk[picked].abs().mean())
        assert torch.allclose(sent[picked].abs(), torch.full((k,), mean), rtol=2**-8)


def test_int4_values_are_within_half_a_level() -> None:
    x = _update(2)
    back = decode(encode(x, "top8-int4"), "top8-int4", SHAPES)
    sent = back["w"] != 0
    chunk_max = x["w"].abs().max()
    assert int(sent.sum()) <= 8 * 83
    err = (back["w"][sent] - x["w"][sent]).abs().max()
    assert float(err) <= float(chunk_max) / 14 * (1 + 2**-7)


@pytest.mark.parametrize(
    ("key", "damage"),
    [("w", lambda t: t[:-1]), ("w#values", lambda t: t[:-1]),
     ("w#scale", lambda t: t.float()), ("w#values", lambda t: torch.full_like(t, 0xFF))],
)  # fmt: skip
def test_a_corrupted_wire_is_refused(key: str, damage: object) -> None:
    enc = encode(_update(), "top8-int4")
    enc[key] = damage(enc[key])  # type: ignore[operator]
    with pytest.raises(ValueError, match=key.split("#")[0]):
        decode(enc, "top8-int4", SHAPES)


@pytest.mark.parametrize("encoding", ["top4-sign", "top16-int4"])
def test_what_was_sent_plus_the_residual_is_the_accumulated_update(encoding: str) -> None:
    """Error feedback at a node over rounds: every update's unsent part waits in the residual,
    so the sum of what arrived plus what is held is exactly the sum of the updates."""
    total = {k: torch.zeros(s) for k, s in SHAPES.items()}
    arrived = {k: torch.zeros(s) for k, s in SHAPES.items()}
    state = InnerState(round=0, node_step=0, optimizer=None)
    for round_ in range(1, 9):
        delta = _update(round_)
        for k in SHAPES:
            total[k] += delta[k]
        encoded, residual = with_error_feedback(encoding, delta, state, "sha")
        assert residual is not None
        got = decode(encoded, encoding, SHAPES)
        for k in SHAPES:
            arrived[k] += got[k]
            assert torch.allclose(arrived[k] + residual[k], total[k], rtol=0, atol=1e-8)
        state = InnerState(round_, 0, None, "sha", None, residual)
    # a value waits until it is among its chunk's largest: most of the update has arrived
    share = float((arrived["w"] * total["w"]).sum() / total["w"].square().sum())
    assert share > 0.3


def test_the_sparse_broadcast_moves_the_nodes_copy_to_the_weights() -> None:
    """Down: the coordinator sends the K largest of each chunk of (weights - nodes' copy); the
    rest waits. The copy follows moving weights and the gap stays bounded."""
    torch.manual_seed(0)
    weights = {"w": torch.randn(64, 256)}
    b = DeltaBroadcast("top16-sign-delta")
    first = b.message(weights)
    held = decode(first.tensors, "bf16", {"w": weights["w"].shape})
    gaps = []
    for _ in range(60):
        weights = {"w": weights["w"] - 1e-3 * torch.randn(64, 256)}
        msg = b.message(weights)
        assert encoded_bytes(msg.tensors) == 64 * (16 + 2 + 2)  # one chunk per row of 256
        held = apply_delta(held, msg.tensors, "top16-sign")
        assert b.view is not None and torch.equal(held["w"], b.view["w"])  # same bits
        gaps.append(float((weights["w"] - held["w"]).norm()))
    assert max(gaps[30:]) < 1.5 * max(gaps[10:30])  # bounded, not piling up
