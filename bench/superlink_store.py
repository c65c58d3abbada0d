"""The SuperLink's object store, in memory or in a SQLite file: its memory and time for a round.

Flower's SuperLink keeps every message's content in an object store (content-addressed: a
message's arrays in chunks, each chunk one object), in Python memory (``--database
:flwr-in-memory:``) or in a SQLite file (``--database <path>``, what step-coord runs). Each cell
runs in a fresh process and does to Flower's own store classes what the SuperLink does in a
round: the broadcast's objects arrive for each node (the same content for all, as
coordinator/broadcast.py sends it; the store keeps one copy) and are put, each node pulls them
and confirms, then all nodes' replies (int8 updates) arrive before the ServerApp pulls them
one by one (the worst case: a coordinator busy while every node finishes). Peak resident
memory (VmHWM, reset once the messages exist) above what the process held before the store
existed, as a multiple of the fp32 model's bytes. The times include what the ServerApp and the
nodes do besides the store (object ids: SHA-256 of every chunk), the same for both stores.

    python bench/superlink_store.py [--presets small,base,1b] [--nodes 2,8]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STORES = ("memory", "sqlite")


def status_mib(key: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    text = Path("/proc/self/status").read_text()
    return int(text.split(key + ":", 1)[1].split()[0]) / 1024  # kB


def reset_peak() -> None:
    """Start VmHWM again from what the process holds now (Linux: clear_refs 5): building the
    messages peaked higher than what the store adds."""
    Path("/proc/self/clear_refs").write_text("5")


def _messages(preset: str, nodes: int) -> tuple[list[Any], list[Any], int]:
    """(broadcast messages, reply messages, fp32 model bytes) as Flower objects."""
    import torch
    from flwr.app import ArrayRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from step_fed.update_codec import encode
    from step_model.config import preset as model_preset
    from step_model.model import Transformer

    # what the ServerApp's process is told by the SuperLink before it builds messages
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    config = model_preset(preset).with_vocab(259)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    content = RecordDict({"arrays": ArrayRecord(weights)})
    del weights
    down = [Message(content, dst_node_id=n, message_type="train") for n in range(1, nodes + 1)]
    up = []
    for n in range(1, nodes + 1):
        update = {}
        for name, shape in shapes.items():
            update.update(encode({name: torch.randn(shape, generator=gen) * 1e-3}, "int8"))
        up.append(Message(RecordDict({"arrays": ArrayRecord(update)}), reply_to=down[n - 1]))
    return down, up, 4 * sum(s.numel() for s in shapes.values())


def _store(kind: str, folder: Path) -> Any:
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory

    database = FLWR_IN_MEMORY_DB_NAME if kind == "memory" else str(folder / "state.db")
    return ObjectStoreFactory(database).store()


def _push(store: Any, run_id: int, message: Any) -> None:
    """A message's objects the store lacks arrive (fresh bytes, as from the network) and are
    put: the broadcast's chunks once for all nodes (the store is content-addressed)."""
    from flwr.supercore.inflatable.inflatable_object import (
        get_all_nested_objects,
        get_object_tree,
    )

    missing = set(store.preregister(run_id, get_object_tree(message)))
    for object_id, obj in get_all_nested_objects(message).items():
        if object_id in missing:
            store.put(object_id, obj.deflate())


def _pull(store: Any, message: Any) -> int:
    """A receiver takes a message's objects one by one, then confirms it has them (the store
    drops the objects no other message shares); returns the bytes it got."""
    from flwr.supercore.inflatable.inflatable_object import get_object_tree, iterate_object_tree

    got = 0
    for node in iterate_object_tree(get_object_tree(message)):
        content = store.get(node.object_id)
        got += len(content or b"")
    store.delete(message.object_id)
    return got


def cell(kind: str, preset: str, nodes: int) -> dict[str, Any]:
    from step_common.malloc import return_freed_memory

    return_freed_memory()  # the messages' temporaries go back to the system, not to the store
    down, up, model_bytes = _messages(preset, nodes)
    gc.collect()
    reset_peak()
    before = status_mib("VmRSS")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(kind, Path(tmp))
        t0 = time.monotonic()
        for m in down:
            _push(store, 1, m)
        times["put down"] = time.monotonic() - t0
        t0 = time.monotonic()
        for m in down:
            _pull(store, m)
        times["pull down"] = time.monotonic() - t0
        t0 = time.monotonic()
        for m in up:
            _push(store, 1, m)
        for m in up:
            _pull(store, m)
        times["replies"] = time.monotonic() - t0
        store.delete_objects_in_run(1)
    peak = status_mib("VmHWM") - before
    return {"store": kind, "preset": preset, "nodes": nodes,
            "model_mib": round(model_bytes / 2**20, 1), "peak_mib": round(peak),
            "ratio": round(peak * 2**20 / model_bytes, 2),
            "s": {k: round(v, 1) for k, v in times.items()}}  # fmt: skip


def run_cell(kind: str, preset: str, nodes: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--cell", kind, preset, str(nodes)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"killed (exit {done.returncode})"])[-1]
        return {"store": kind, "preset": preset, "nodes": nodes, "error": why}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small,base")
    p.add_argument("--nodes", default="2,8")
    p.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        kind, preset, nodes = args.cell
        print(json.dumps(cell(kind, preset, int(nodes))))
        return
    print("| preset | nodes | store | fp32 model MiB | peak MiB | peak / model | "
          "put down s | pull down s | replies s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for n in args.nodes.split(","):
            for kind in STORES:
                r = run_cell(kind, preset, int(n))
                if "error" in r:
                    print(f"| {preset} | {n} | {kind} | failed: {r['error']} | | | | | |")
                    continue
                s = r["s"]
                print(f"| {preset} | {n} | {kind} | {r['model_mib']:,} | {r['peak_mib']:,} | "
                      f"{r['ratio']}x | {s['put down']} | {s['pull down']} | {s['replies']} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
