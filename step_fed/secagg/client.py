"""A node's side of one secure-aggregation round (SecAgg+, Bell et al. 2020, semi-honest
neighbours, a coordinator that may be malicious towards the keys it relays).

  1. ``advertise``: two fresh public keys, signed with the node's identity key;
  2. ``share_keys``: the neighbours' adverts (relayed by the coordinator) are verified against
     their enrolled identity keys; the node splits its self-mask seed and its mask private key
     into Shamir shares, one pair per live neighbour, each sealed (AES-GCM) to that neighbour,
     and one pair it keeps (SecAgg's holders include the node: with 3 nodes and one dropped,
     each survivor's seed still has two live holders);
  3. ``masked_input``: its quantised update plus its self-mask plus, for each neighbour that
     shared keys, +/- their pairwise mask, mod 2^b;
  4. ``unmask``: for each neighbour that sent a masked input, its share of the self-mask seed;
     for each that dropped after sharing, its share of the mask key; never both for one node,
     and nothing unless enough nodes are in the sum.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from step_fed.secagg.keys import (
    Advert,
    RoundKeys,
    Signer,
    channel_key,
    pair_seed,
    seal,
    unseal,
    verify_advert,
)
from step_fed.secagg.setup import RoundSetup, SecAggError, add_masks, pair_sign
from step_fed.secagg.shamir import SHARE_BYTES, Share, split

_PAIR = 2 * (2 + SHARE_BYTES)  # a sealed message: the share of the seed, then of the mask key


def share_aad(round_id: str, sender: str, recipient: str) -> bytes:
    return f"step-secagg-v1|shares|{round_id}|{sender}|{recipient}".encode()


class SecAggClient:
    def __init__(
        self,
        name: str,
        setup: RoundSetup,
        signer: Signer,
        identities: Mapping[str, str],
        keys: RoundKeys | None = None,
        self_seed: bytes | None = None,
    ) -> None:
        """``identities``: each node's enrolled identity key (OpenSSH public-key line), from a
        source the coordinator cannot alter. ``keys`` and ``self_seed``: those this node drew
        for the round when it advertised (fresh ones if not given)."""
        if name not in setup.nodes:
            raise SecAggError(f"{name} is not in secure-aggregation round {setup.round_id}")
        self.name, self.setup, self.signer, self.identities = name, setup, signer, identities
        self.keys = keys or RoundKeys()
        self.self_seed = self_seed or os.urandom(32)
        self.neighbours = setup.graph[name]
        self.peers: dict[str, Advert] = {}
        self.held: dict[str, tuple[Share, Share]] = {}
        """From each neighbour that shared keys: its shares of (self-mask seed, mask key)."""
        self.own: tuple[Share, Share] | None = None
        """This node's own share of its (self-mask seed, mask key)."""

    def advertise(self) -> Advert:
        return self.keys.advert(self.setup.round_id, self.name, self.signer)

    def share_keys(self, adverts: Mapping[str, Advert]) -> dict[str, bytes]:
        """Sealed shares for each neighbour whose advert verifies; raises if any advert does
        not (a swapped or replayed key: the round must stop) or too few neighbours are live."""
        round_id = self.setup.round_id
        for node, advert in adverts.items():
            identity = self.identities.get(node)
            if node not in self.neighbours or identity is None:
                raise SecAggError(f"{self.name}: the coordinator relayed keys of {node}, not a "
                                  f"neighbour in round {round_id}")  # fmt: skip
            if not verify_advert(advert, round_id, node, identity):
                raise SecAggError(
                    f"{self.name}: the keys relayed as {node}'s for round {round_id} are not "
                    f"signed by {node}'s enrolled key: the coordinator (or someone between) "
                    "swapped or replayed them; this node leaves the round"
                )
        if len(adverts) + 1 < self.setup.threshold:
            raise SecAggError(
                f"{self.name}: {len(adverts)} live neighbours and itself, fewer than the "
                f"threshold {self.setup.threshold}: leaving the round"
            )
        self.peers = dict(adverts)
        live = sorted(adverts)
        points = [self.setup.point(n) for n in (*live, self.name)]
        t = self.setup.threshold
        seeds = split(self.self_seed, points, t)
        masks = split(self.keys.mask_secret(), points, t)
        self.own = (seeds.pop(), masks.pop())
        out = {}
        for node, s_share, m_share in zip(live, seeds, masks, strict=True):
            key = channel_key(
                self.keys.channel, adverts[node].channel_key, round_id, self.name, node
            )
            out[node] = seal(key, s_share.to_bytes() + m_share.to_bytes(),
                             share_aad(round_id, self.name, node))  # fmt: skip
        return out

    def masked_input(self, levels: np.ndarray, sealed: Mapping[str, bytes]) -> np.ndarray:
        """``levels`` (uint32, the quantised update) masked mod 2^b; ``sealed``: the shares
        the neighbours sent this node (who sent is who shared keys: their masks go in)."""
        if levels.shape != (self.setup.length,):
            raise SecAggError(
                f"{self.name}: {levels.shape} values, the round has {self.setup.length}"
            )
        round_id = self.setup.round_id
        for node, box in sealed.items():
            advert = self.peers.get(node)
            if advert is None:
                raise SecAggError(f"{self.name}: shares from {node}, whose keys it never verified")
            key = channel_key(self.keys.channel, advert.channel_key, round_id, self.name, node)
            plain = unseal(key, box, share_aad(round_id, node, self.name))
            if plain is None or len(plain) != _PAIR:
                raise SecAggError(f"{self.name}: the shares from {node} do not open for round "
                                  f"{round_id} (tampered or replayed)")  # fmt: skip
            half = _PAIR // 2
            self.held[node] = (Share.from_bytes(plain[:half]), Share.from_bytes(plain[half:]))
        terms = [(self.self_seed, 1)]
        for node in sorted(self.held):
            seed = pair_seed(self.keys.mask, self.peers[node].mask_key, round_id, self.name, node)
            terms.append((seed, pair_sign(self.name, node)))
        return add_masks(levels.astype(np.uint32, copy=True), terms, self.setup.bits)

    def unmask(self, survivors: list[str], dropped: list[str]) -> dict[str, tuple[str, bytes]]:
        """For each neighbour it holds shares of: ("seed", share) if it survived (its
        self-mask comes off), ("mask", share) if it dropped after sharing keys (its pairwise
        masks come off). Refuses a request that would reveal both for a node, or a sum of too
        few nodes."""
        alive, gone = set(survivors), set(dropped)
        if alive & gone:
            raise SecAggError(f"{self.name}: asked to reveal both secrets of {sorted(alive & gone)}"
                              ": that would unmask their update; refused")  # fmt: skip
        if self.name not in alive or len(alive) < self.setup.min_survivors:
            raise SecAggError(
                f"{self.name}: {len(alive)} nodes in the sum, fewer than min_survivors "
                f"{self.setup.min_survivors} (or not this node): refusing to unmask"
            )
        out = {}
        held = dict(self.held)
        if self.own is not None:  # its own seed share (it is alive: its mask key stays hidden)
            held[self.name] = self.own
        for node, (seed_share, mask_share) in held.items():
            if node in alive:
                out[node] = ("seed", seed_share.to_bytes())
            elif node in gone:
                out[node] = ("mask", mask_share.to_bytes())
        return out
