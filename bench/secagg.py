"""What secure aggregation costs a round (step_fed/secagg): CPU time and bytes of its stages.

Runs the protocol's four stages in one process for N nodes over an update the size of a
model preset, timing each party's work (per node: the mean over nodes; the coordinator: its
whole share), and counting the bytes each stage moves per node. The masked input's bytes are
those of b-bit integers stored in the smallest of uint8/16/32 that holds them; the plain
round's int8 and int3 updates are the comparison. Mask generation (ChaCha20) is timed against
a plain copy of the same number of bytes, in the same run.

    python bench/secagg.py [--presets debug,small,base] [--nodes 8,16] [--degree 6]

One JSON line per (preset, nodes), then one for the mask throughput.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from step_fed.identity import NodeSigner, write_new_key  # noqa: E402
from step_fed.secagg.client import SecAggClient  # noqa: E402
from step_fed.secagg.grid import Grid  # noqa: E402
from step_fed.secagg.prg import CHUNK, MaskStream  # noqa: E402
from step_fed.secagg.server import SecAggServer  # noqa: E402
from step_fed.secagg.setup import RoundSetup  # noqa: E402
from step_model.config import preset  # noqa: E402

VOCAB = 2048  # the default example's BPE vocabulary


def signers(folder: Path, names: list[str]) -> dict[str, NodeSigner]:
    return {name: write_new_key(folder / f"{name}.key") for name in names}


def wire_bytes(bits: int) -> int:
    return 1 if bits <= 8 else 2 if bits <= 16 else 4


def one_round(name: str, n: int, degree: int, folder: Path) -> dict[str, object]:
    length = preset(name).with_vocab(VOCAB).num_params()
    names = [f"inst-{i:02d}" for i in range(n)]
    people = signers(folder, names)
    identities = {k: s.public_line for k, s in people.items()}
    k = min(degree, n - 1)
    setup = RoundSetup(f"bench-{name}-{n}", tuple(names), degree=k, threshold=k // 2 + 1,
                       min_survivors=max(k // 2 + 1, n // 2), grid=Grid(1.0, 0.01, 3),
                       length=length)  # fmt: skip
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 1 << setup.grid.bits, length, dtype=np.uint32)
    server = SecAggServer(setup)
    clients = {m: SecAggClient(m, setup, people[m], identities) for m in names}
    node_s = {"advertise": 0.0, "share_keys": 0.0, "masked_input": 0.0, "unmask": 0.0}
    t = time.process_time()
    adverts = {m: c.advertise() for m, c in clients.items()}
    node_s["advertise"] = time.process_time() - t
    relayed = server.route_adverts(adverts)
    t = time.process_time()
    sent = {m: clients[m].share_keys(relayed[m]) for m in names}
    node_s["share_keys"] = time.process_time() - t
    boxes = server.route_shares(sent)
    t = time.process_time()
    masked = {m: clients[m].masked_input(levels, boxes[m]) for m in names}
    node_s["masked_input"] = time.process_time() - t
    t = time.process_time()
    survivors, dropped = server.add_masked(masked)
    add_s = time.process_time() - t
    t = time.process_time()
    revealed = {m: clients[m].unmask(survivors, dropped) for m in survivors}
    node_s["unmask"] = time.process_time() - t
    t = time.process_time()
    total = server.unmask(revealed)
    unmask_s = time.process_time() - t
    assert np.array_equal(
        total, (levels.astype(np.int64) * n % (1 << setup.bits)).astype(np.uint32)
    )
    advert_b = 32 + 32 + len(adverts[names[0]].signature) + len(setup.round_id) + len(names[0])
    shares_b = sum(len(b) for b in sent[names[0]].values())
    reveal_b = sum(len(v[1]) + len(o) for o, v in revealed[names[0]].items())
    return {
        "preset": name, "params": length, "nodes": n, "degree": k, "bits": setup.grid.bits,
        "modulus_bits": setup.bits,
        "node_cpu_s": {s: round(v / n, 3) for s, v in node_s.items()},
        "coordinator_cpu_s": {"sum": round(add_s, 3), "unmask": round(unmask_s, 3)},
        "node_bytes": {"advert_up": advert_b, "adverts_down": advert_b * k,
                       "shares_up": shares_b, "shares_down": shares_b,
                       "masked_up": length * wire_bytes(setup.bits), "reveal_up": reveal_b},
        "bytes_per_param": {"secure": wire_bytes(setup.bits), "int8": 1, "int3": 3 / 8},
    }  # fmt: skip


def mask_throughput(n_bytes: int) -> dict[str, object]:
    """ChaCha20 masks against a plain copy of the same bytes (best of 3 each)."""
    src = np.ones(n_bytes // 4, dtype=np.uint32)
    copy_s, mask_s = [], []
    for _ in range(3):
        t = time.perf_counter()
        src.copy()
        copy_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        stream, left = MaskStream(bytes(32), 32), n_bytes // 4
        while left:
            left -= len(stream.take(min(CHUNK, left)))
        mask_s.append(time.perf_counter() - t)
    return {"measure": "mask_throughput", "bytes": n_bytes,
            "copy_gb_s": round(n_bytes / min(copy_s) / 1e9, 2),
            "mask_gb_s": round(n_bytes / min(mask_s) / 1e9, 2),
            "mask_over_copy_time": round(min(mask_s) / min(copy_s), 1),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="debug,small,base")
    ap.add_argument("--nodes", default="8,16")
    ap.add_argument("--degree", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            for n in (int(x) for x in args.nodes.split(",")):
                print(json.dumps(one_round(name, n, args.degree, Path(tmp))), flush=True)
    print(json.dumps(mask_throughput(256 << 20)), flush=True)


if __name__ == "__main__":
    main()
