"""A node's update kept as it came over the wire, decoded one tensor at a time when read.

The round loop holds every update of a round until it aggregates them; decoded, that is one fp32
model per node (the coordinator's memory grew with model x nodes). Kept encoded, an int8 update
is a quarter of that (int4 an eighth, int3 3/32), and the aggregation rules read it tensor by
tensor, so at most one decoded tensor per node is alive at once. The values read are exactly
those a whole decode gives (same code, ``step_fed.update_codec.decode_one``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from step_fed.update_codec import check_keys, decode_one


class EncodedUpdate(Mapping[str, torch.Tensor]):
    """Read-only ``{tensor name: fp32 update}`` over an encoded update.

    ``seen``: (vocab,) bool, for an update that carries of the tensors ``seen_names`` only the
    rows of the tokens the node saw (step_fed.protocol.SEEN_ROWS): those rows are put back in
    place, the others are 0. ``scale``: a factor every tensor read is multiplied by (robust
    clipping), applied as ``tensor * scale`` like the whole-update code it replaces.
    """

    def __init__(
        self,
        arrays: Mapping[str, torch.Tensor],
        encoding: str,
        shapes: dict[str, torch.Size],
        seen: torch.Tensor | None = None,
        seen_names: tuple[str, ...] = (),
    ) -> None:
        self.arrays, self.encoding, self.shapes = arrays, encoding, shapes
        self.seen, self.seen_names = seen, seen_names if seen is not None else ()
        self.wire_shapes = dict(shapes)
        if self.seen is not None:
            n_seen = int(self.seen.sum())
            for name in self.seen_names:
                self.wire_shapes[name] = torch.Size((n_seen, *shapes[name][1:]))
        check_keys(arrays, encoding, self.wire_shapes)  # ValueError: the reply is rejected
        self.scale: float | None = None

    def __getitem__(self, name: str) -> torch.Tensor:
        t = decode_one(self.arrays, self.encoding, name, self.wire_shapes[name])
        if name in self.seen_names:
            assert self.seen is not None
            t = _scatter_rows(t, self.seen)
        return t if self.scale is None else t * self.scale

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def scaled(self, scale: float) -> EncodedUpdate:
        """The same update with every tensor read multiplied by ``scale``."""
        out = self._copy()
        out.scale = scale if self.scale is None else self.scale * scale
        return out

    def with_arrays(self, arrays: Mapping[str, torch.Tensor]) -> EncodedUpdate:
        """The same update read from ``arrays`` (the same encoded tensors, held elsewhere:
        coordinator/spill.py)."""
        out = self._copy()
        out.arrays = arrays
        return out

    def _copy(self) -> EncodedUpdate:
        out = EncodedUpdate.__new__(EncodedUpdate)
        out.__dict__.update(self.__dict__)
        return out


def _scatter_rows(rows: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """(seen rows, dim) -> (vocab, dim), zeros where ``seen`` is False."""
    out = torch.zeros((seen.shape[0], *rows.shape[1:]), dtype=rows.dtype)
    out[seen] = rows
    return out
