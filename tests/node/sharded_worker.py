"""Run by tests/node/test_sharded.py under torchrun: rounds of a `debug` node on W workers (gloo,
CPU, FSDP2) through ``node.sharded_round``; worker 0 writes each round's update and result.

    torchrun --standalone --nproc-per-node W tests/node/sharded_worker.py STATE OUT FIRST LAST
        CHECKPOINTING SHARDING [dp]

CHECKPOINTING 1: activations recomputed in the backward pass (the same math); SHARDING
full_shard or replicate; dp: DP-SGD rounds (``DP``, noise 0, seed ``DP_SEED``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from node.data import NodeData
from node.dp_trainer import DPSettings
from node.sharded_dp import WorkerDP
from node.sharded_round import sharded_round
from node.state import NodeStateStore
from step_fed.protocol import RoundConfig
from step_model.checkpoint import seeded_weights
from step_model.config import preset
from step_model.data import tokenize_texts
from step_model.tokenizer import ByteTokenizer

CPU = torch.device("cpu")
DP, DP_SEED = DPSettings(0.0, 1.0, 4, "ghost"), 13
TEXT = "".join(f"Satz {i}: der Hund {i % 7} läuft über die Brücke {i * 13 % 101}.\n"
               for i in range(400))  # fmt: skip


def round_config(round_: int) -> RoundConfig:
    tok = ByteTokenizer()
    return RoundConfig(
        round=round_, total_rounds=4, inner_steps=3, inner_lr=3e-3, min_lr_ratio=0.1,
        warmup_steps=0, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, batch_size=4,
        seq_len=16, alpha=0.3, seed=0, update_encoding="int8", seen_rows=2,
        model_json=json.dumps(preset("debug").with_vocab(tok.vocab_size).to_dict()),
        tokenizer=tok.to_json(), tokenizer_sha256="test",
    )  # fmt: skip


def node_data() -> NodeData:
    return NodeData(train=tokenize_texts({"de": TEXT}, ByteTokenizer()), valid={})


def received(round_: int) -> dict[str, torch.Tensor]:
    """The global weights of a round: fixed weights moved a little each round, as a
    federation's model moves (the coordinator's side is tested apart)."""
    config = preset("debug").with_vocab(ByteTokenizer().vocab_size)
    weights, step = seeded_weights(config, 0), seeded_weights(config, 1)
    return {k: w + (round_ - 1) * 1e-3 * step[k] for k, w in weights.items()}


def main() -> None:
    state, out = Path(sys.argv[1]), Path(sys.argv[2])
    first, last = int(sys.argv[3]), int(sys.argv[4])
    checkpointing, sharding = sys.argv[5] == "1", sys.argv[6]
    private = WorkerDP(DP, DP_SEED) if sys.argv[7:] == ["dp"] else None
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    store, data, tok = NodeStateStore(state, keep=8), node_data(), ByteTokenizer()
    for r in range(first, last + 1):
        weights = (lambda r=r: received(r)) if dist.get_rank() == 0 else None
        result = sharded_round("node-a", data, tok, round_config(r), weights, store, CPU,
                               "fp32", checkpointing, sharding, private)  # fmt: skip
        if result is not None:
            folder = out / f"round-{r}"
            folder.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in result.update.items()},
                      str(folder / "update.safetensors"))  # fmt: skip
            if result.token_counts is not None:
                save_file({"counts": result.token_counts}, str(folder / "counts.safetensors"))
            (folder / "result.json").write_text(json.dumps(
                {"tokens": result.tokens_per_language, "loss": result.mean_loss}))  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
