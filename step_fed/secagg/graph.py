"""Who shares secrets with whom: SecAgg+'s sparse random k-regular graph.

The nodes are placed on a ring in an order drawn from SHA-256 of the round id and their names
(public: every node recomputes it, the coordinator does not choose it), and each is linked to
its k/2 nearest on either side (a Harary graph): O(log n) neighbours instead of n - 1 make
the protocol's cost grow with log n. With k >= n - 1 the graph is complete.
"""

from __future__ import annotations

import hashlib


def ring_order(names: list[str], round_id: str) -> list[str]:
    def key(name: str) -> bytes:
        return hashlib.sha256(f"step-secagg-graph|{round_id}|{name}".encode()).digest()

    return sorted(set(names), key=key)


def neighbours(names: list[str], k: int, round_id: str) -> dict[str, list[str]]:
    """Each node's neighbours (sorted), k of them (k rounded up to even), or all others."""
    ring = ring_order(names, round_id)
    n = len(ring)
    if k >= n - 1:
        return {a: sorted(b for b in ring if b != a) for a in ring}
    half = (k + 1) // 2
    links: dict[str, set[str]] = {a: set() for a in ring}
    for i, a in enumerate(ring):
        for d in range(1, half + 1):
            b = ring[(i + d) % n]
            links[a].add(b)
            links[b].add(a)
    return {a: sorted(b) for a, b in links.items()}
