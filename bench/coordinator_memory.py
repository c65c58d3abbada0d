"""Peak memory of the coordinator's round loop against the model size and the number of nodes.

Each cell runs in a fresh process: the real ``RoundRunner`` (check, decode, aggregate, outer
step) for two rounds, fed by an in-process transport whose nodes answer with real encoded
updates (random pseudo-gradients of the model's shapes through ``step_fed.update_codec``, with
token counts), so no training time is spent and nothing but the coordinator is measured. The
process reports its peak resident memory (``ru_maxrss``) minus what it held before the runner
existed (the interpreter and torch), as a multiple of the fp32 model's bytes.

    python bench/coordinator_memory.py [--presets small,base,1b] [--nodes 2,4,8,16]
        [--rules mean,filtered_mean] [--encoding int8] [--order sorted|reversed|shuffled]
        [--update-memory-mib 2048]

"most waiting": the most updates that waited, encoded, for their turn at once (they arrived
before a node ahead of them in name order; coordinator/in_order.py); "on disk": how many of
the waiting or kept updates went to disk (beyond ``--update-memory-mib``; coordinator/spill.py).

The model's vocabulary is the byte tokenizer's (259 rows): the parameter counts are the
presets' minus their embedding and head rows (e.g. `small` 38.2M instead of 50.5M).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class EncodedNodes:
    """A Transport whose ``n`` nodes reply to a train message with an encoded update each, one
    reply at a time in the arrival order ``order``: ``sorted`` (node-name order, the order the
    coordinator adds them in), ``reversed`` (the worst case: every update but the last waits
    for the first) or ``shuffled`` (seeded)."""

    def __init__(self, n: int, shapes: dict[str, Any], encoding: str, order: str) -> None:
        self.n, self.shapes, self.encoding, self.order = n, shapes, encoding, order
        self.resent: list[str] = []

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        return list(range(1, self.n + 1))

    def name_of(self, node_id: int) -> str | None:
        return f"node-{node_id:02d}"

    def send(
        self,
        kind: str,
        node_ids: list[int],
        weights: Any,
        config: dict[str, Any],
        extra: Any = None,
    ) -> Any:
        from step_fed.transport import RawReply

        assert kind == "train", "the bench runs train rounds only"
        for n in self._arrival(node_ids):  # each reply made when the round loop asks for it
            yield RawReply(n, self.name_of(n) or "", *self._reply(n, config))

    def _arrival(self, node_ids: list[int]) -> list[int]:
        if self.order == "reversed":
            return sorted(node_ids, reverse=True)
        if self.order == "shuffled":
            ids = list(node_ids)
            random.Random(len(ids)).shuffle(ids)
            return ids
        return sorted(node_ids)

    def _reply(self, node_id: int, config: dict[str, Any]) -> tuple[dict[str, float], Any]:
        import torch

        from step_fed import protocol as P
        from step_fed.update_codec import encode

        gen = torch.Generator().manual_seed(node_id)
        arrays = {}
        for name, shape in self.shapes.items():  # one fp32 tensor at a time: encoded, dropped
            update = torch.randn(shape, generator=gen) * 1e-3
            arrays.update(encode({name: update}, self.encoding))
        vocab = self.shapes[P.EMBEDDING_WEIGHT][0]
        arrays[P.TOKEN_COUNTS] = torch.randint(0, 50, (vocab,), generator=gen, dtype=torch.int32)
        tokens = int(config[P.CFG_BATCH_SIZE]) * int(config[P.CFG_SEQ_LEN])
        metrics = {P.M_ROUND: float(config[P.CFG_ROUND]), P.M_NUM_TOKENS: float(tokens),
                   P.M_TRAIN_LOSS: 3.0, P.M_WALL_S: 1.0,
                   P.M_TOKENS_PREFIX + "de": float(tokens)}  # fmt: skip
        return metrics, arrays


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cell(
    preset: str, nodes: int, rule: str, encoding: str, order: str, memory_mib: int
) -> dict[str, Any]:
    """Two rounds of the real round loop; the memory it needed above the bare process."""
    import torch

    from coordinator.config import FederationConfig
    from coordinator.rounds import RoundRunner
    from step_common.malloc import return_freed_memory
    from step_model.config import preset as model_preset

    torch.set_num_threads(2)
    return_freed_memory()  # as the coordinator's ServerApp does
    before = rss_mib()
    cfg = FederationConfig.model_validate(
        {"preset": preset, "rounds": 2, "inner_steps": 1, "batch_size": 1, "seq_len": 64,
         "update_encoding": encoding, "aggregation": rule, "seen_rows": "none",
         "min_nodes": nodes, "update_memory_mib": memory_mib}
    )  # fmt: skip
    shapes = {k: v.shape for k, v in _shapes(model_preset(preset).with_vocab(259)).items()}
    model_bytes = 4 * sum(torch.Size(s).numel() for s in shapes.values())
    waiting, spilled, t0 = 0, 0, time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        runner = RoundRunner(cfg, Path(tmp) / "run", EncodedNodes(nodes, shapes, encoding, order))
        for r in (1, 2):
            runner.train_round(r)
            waiting = max(waiting, runner.most_waiting)
            spilled = max(spilled, runner.spilled)
    peak = rss_mib() - before
    return {"preset": preset, "nodes": nodes, "rule": rule, "encoding": encoding,
            "order": order, "model_mib": round(model_bytes / 2**20, 1),
            "peak_mib": round(peak, 1), "ratio": round(peak * 2**20 / model_bytes, 2),
            "waiting": waiting, "on_disk": spilled,
            "s": round(time.monotonic() - t0, 1)}  # fmt: skip


def _shapes(config: Any) -> dict[str, Any]:
    """The model's tensors without allocating them (meta device)."""
    import torch

    from step_model.model import Transformer

    with torch.device("meta"):
        return dict(Transformer(config).state_dict())


def run_cell(
    preset: str, nodes: int, rule: str, encoding: str, order: str, memory_mib: int
) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--cell", preset, str(nodes), rule, encoding, order,
            str(memory_mib)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"killed (exit {done.returncode})"])[-1]
        return {"preset": preset, "nodes": nodes, "rule": rule, "error": why}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def slope(rows: list[dict[str, Any]]) -> float:
    """Growth of the peak per added node, as a share of the smallest cell's peak."""
    ok = [r for r in rows if "peak_mib" in r]
    if len(ok) < 2:
        return float("nan")
    first, last = ok[0], ok[-1]
    per_node = (last["peak_mib"] - first["peak_mib"]) / (last["nodes"] - first["nodes"])
    return float(per_node / first["peak_mib"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small,base")
    p.add_argument("--nodes", default="2,4,8,16")
    p.add_argument("--rules", default="mean,filtered_mean")
    p.add_argument("--encoding", default="int8")
    p.add_argument("--order", default="sorted", choices=["sorted", "reversed", "shuffled"])
    p.add_argument("--update-memory-mib", type=int, default=2048, help="as in coordinator.yaml")
    p.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        preset, nodes, rule, encoding, order, *memory = args.cell
        mib = int(memory[0]) if memory else 2048
        print(json.dumps(cell(preset, int(nodes), rule, encoding, order, mib)))
        return
    print(f"arrival order: {args.order}, updates: {args.encoding}, "
          f"update_memory_mib: {args.update_memory_mib}")  # fmt: skip
    print("| preset | rule | nodes | fp32 model MiB | peak MiB | peak / model | most waiting | "
          "on disk | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for rule in args.rules.split(","):
            rows = []
            for n in args.nodes.split(","):
                r = run_cell(preset, int(n), rule, args.encoding, args.order,
                             args.update_memory_mib)  # fmt: skip
                rows.append(r)
                shown = (f"{r['model_mib']:,} | {r['peak_mib']:,.0f} | {r['ratio']}x | "
                         f"{r['waiting']} | {r['on_disk']} | {r['s']}" if "peak_mib" in r
                         else f"- | - | failed: {r['error']} | | | ")  # fmt: skip
                print(f"| {preset} | {rule} | {n} | {shown} |", flush=True)
            print(f"| {preset} | {rule} | slope | per added node: {slope(rows):+.1%} "
                  "of the smallest cell's peak | | | | | |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
