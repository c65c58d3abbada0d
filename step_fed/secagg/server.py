"""The coordinator's side of one secure-aggregation round: it relays keys and shares it cannot
read, adds the masked inputs mod 2^b, and removes the masks with the shares the survivors
reveal. It learns the sum of the survivors' quantised updates and who took part; a round with
too few shares to unmask is abandoned whole (``SecAggAbandoned``): no partial sum is made.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from step_fed.secagg.keys import Advert, pair_seed
from step_fed.secagg.setup import RoundSetup, SecAggAbandoned, SecAggError, add_masks, pair_sign
from step_fed.secagg.shamir import Share, combine


class SecAggServer:
    def __init__(self, setup: RoundSetup) -> None:
        self.setup = setup
        self.adverts: dict[str, Advert] = {}
        self.sharers: dict[str, set[str]] = {}
        """For each node: the neighbours whose shares were relayed to it (their pairwise masks
        are in its masked input)."""
        self.total: np.ndarray | None = None
        self.survivors: list[str] = []
        self.dropped: list[str] = []

    def route_adverts(self, adverts: Mapping[str, Advert]) -> dict[str, dict[str, Advert]]:
        """Stage 1 -> 2: each live node gets its live neighbours' adverts."""
        self.adverts = {n: a for n, a in adverts.items() if n in self.setup.nodes}
        return {n: {m: self.adverts[m] for m in self.setup.graph[n] if m in self.adverts}
                for n in self.adverts}  # fmt: skip

    def route_shares(self, sent: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Stage 2 -> 3: the sealed shares, to their recipients (among those that sent too)."""
        live = {n for n in sent if n in self.adverts}
        routed: dict[str, dict[str, bytes]] = {n: {} for n in live}
        for sender in live:
            for recipient, box in sent[sender].items():
                if recipient in live and recipient in self.setup.graph[sender]:
                    routed[recipient][sender] = box
        self.sharers = {n: set(boxes) for n, boxes in routed.items()}
        return routed

    def add_masked(self, masked: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
        """Stage 3: the sum of the masked inputs; (survivors, dropped after sharing keys) for
        stage 4. Too few survivors: abandoned."""
        live = sorted(n for n in masked if n in self.sharers)
        if len(live) < self.setup.min_survivors:
            raise SecAggAbandoned(
                f"secure aggregation round {self.setup.round_id}: {len(live)} masked inputs, "
                f"fewer than min_survivors {self.setup.min_survivors}: abandoned"
            )
        total = np.zeros(self.setup.length, dtype=np.uint32)
        for n in live:
            if masked[n].shape != total.shape or masked[n].dtype != np.uint32:
                raise SecAggError(f"{n}'s masked input is {masked[n].dtype}{masked[n].shape}, "
                                  f"not uint32 ({self.setup.length},)")  # fmt: skip
            total += masked[n]  # wraps mod 2^32; reduced mod 2^b at the end
        self.total = total
        self.survivors = live
        self.dropped = sorted(set(self.sharers) - set(live))
        return self.survivors, self.dropped

    def unmask(self, revealed: Mapping[str, Mapping[str, tuple[str, bytes]]]) -> np.ndarray:
        """Stage 4: the survivors' sum of levels (uint32, mod 2^b exact), from the shares the
        survivors revealed; abandoned if a secret lacks ``threshold`` shares."""
        assert self.total is not None, "add_masked first"
        seeds: dict[str, list[Share]] = {n: [] for n in self.survivors}
        keys: dict[str, list[Share]] = {n: [] for n in self.dropped}
        for holder, items in revealed.items():
            if holder not in self.survivors:
                continue
            for owner, (kind, data) in items.items():
                pile = seeds if kind == "seed" else keys if kind == "mask" else None
                if pile is not None and owner in pile:
                    pile[owner].append(Share.from_bytes(data))
        terms = [(self._rebuild(n, shares), -1) for n, shares in seeds.items()]
        for gone, shares in keys.items():
            secret = self._rebuild(gone, shares)
            if _public(secret) != self.adverts[gone].mask_key:
                raise SecAggAbandoned(f"the shares of {gone}'s mask key do not rebuild the key it "
                                      "advertised: abandoned")  # fmt: skip
            for node in self.survivors:
                if gone in self.sharers[node]:  # node masked with +/- its pair mask with gone
                    seed = pair_seed(secret, self.adverts[node].mask_key, self.setup.round_id,
                                     gone, node)  # fmt: skip
                    terms.append((seed, -pair_sign(node, gone)))
        return add_masks(self.total.copy(), terms, self.setup.bits)

    def _rebuild(self, owner: str, shares: list[Share]) -> bytes:
        if len(shares) < self.setup.threshold:
            raise SecAggAbandoned(
                f"secure aggregation round {self.setup.round_id}: {len(shares)} shares of "
                f"{owner}'s secret, {self.setup.threshold} needed: abandoned, nothing unmasked"
            )
        return combine(shares, self.setup.threshold)


def _public(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
