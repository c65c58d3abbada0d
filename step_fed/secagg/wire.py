"""The protocol's messages as the plain values a transport carries (bytes, str, arrays), and
back, refusing what does not have the right shape: a node or the coordinator never acts on a
malformed message.

A masked input travels as the smallest unsigned integer type that holds b bits (uint8 up to 8
bits, uint16 up to 16, else uint32): 1 byte per parameter for b <= 8.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from step_fed.secagg.keys import Advert
from step_fed.secagg.setup import SecAggError

Record = dict[str, str | bytes]
KINDS = ("seed", "mask")


def advert_record(advert: Advert) -> Record:
    return {"round_id": advert.round_id, "node": advert.node, "channel_key": advert.channel_key,
            "mask_key": advert.mask_key, "signature": advert.signature}  # fmt: skip


def advert_of(record: Mapping[str, object], source: str) -> Advert:
    """An advert from its record; SecAggError naming ``source`` if it is malformed."""
    texts = [record.get(k) for k in ("round_id", "node", "signature")]
    keys = [record.get(k) for k in ("channel_key", "mask_key")]
    if not all(isinstance(t, str) for t in texts) or not all(
        isinstance(k, bytes) and len(k) == 32 for k in keys
    ):
        raise SecAggError(f"{source}: a malformed key advert (needs round_id, node, signature "
                          "texts and two 32-byte keys)")  # fmt: skip
    round_id, node, signature = (str(t) for t in texts)
    channel, mask = (bytes(k) for k in keys if isinstance(k, bytes))
    return Advert(round_id, node, channel, mask, signature)


def reveal_record(revealed: Mapping[str, tuple[str, bytes]]) -> Record:
    """``{owner: (kind, share)}`` as ``{"kind:owner": share}``."""
    return {f"{kind}:{owner}": share for owner, (kind, share) in revealed.items()}


def reveal_of(record: Mapping[str, object], source: str) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    for key, share in record.items():
        kind, _, owner = key.partition(":")
        if kind not in KINDS or not owner or not isinstance(share, bytes):
            raise SecAggError(f"{source}: a malformed share {key!r} (kind:owner -> bytes)")
        out[owner] = (kind, share)
    return out


def wire_dtype(bits: int) -> type[np.unsignedinteger]:
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


def pack(masked: np.ndarray, bits: int) -> np.ndarray:
    """A masked input (uint32 values < 2^bits) in the smallest type that holds them."""
    return masked.astype(wire_dtype(bits))


def unpack(arr: np.ndarray, bits: int, length: int, source: str) -> np.ndarray:
    """A masked input as uint32; SecAggError naming ``source`` for another type, length or
    a value of more than ``bits`` bits."""
    if arr.dtype != wire_dtype(bits) or arr.shape != (length,):
        raise SecAggError(f"{source}: a masked input of {arr.dtype}{arr.shape}, the round "
                          f"expects {np.dtype(wire_dtype(bits))}({length},)")  # fmt: skip
    values = arr.astype(np.uint32)
    if length and int(values.max()) >= 1 << bits:
        raise SecAggError(f"{source}: a masked input with values of more than {bits} bits")
    return values
