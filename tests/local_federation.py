"""An in-process federation for tests: the coordinator's round loop talking to the node's
ClientApp functions directly, through real Flower Message objects but no SuperLink or Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.flower_transport import raw_from_message
from coordinator.replies import RawReply, Weights
from coordinator.rounds import Kind
from node import client_app
from step_model import protocol as P


class LocalTransport:
    """Delivers each message to the ClientApp of virtual institution ``partition-id``."""

    def __init__(self, config_file: Path, run_dir: Path, n_nodes: int) -> None:
        # Messages are stamped with the sending task's identity; here that is "the ServerApp".
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config={"partition-id": i, "num-partitions": n_nodes},
                state=RecordDict(),
                run_config={P.RUN_CONFIG_FILE: str(config_file), P.RUN_DIR: str(run_dir)},
            )
            for i in range(n_nodes)
        }
        self.drop: set[int] = set()  # node ids that do not answer

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        return sorted(self.contexts)

    def send(
        self, kind: Kind, node_ids: list[int], weights: Weights, config: dict[str, Any]
    ) -> list[RawReply]:
        replies = []
        for n in node_ids:
            if n in self.drop:
                continue
            content = RecordDict({P.ARRAYS: ArrayRecord(weights), P.CONFIG: ConfigRecord(config)})
            mtype = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
            msg = Message(content, dst_node_id=n, message_type=mtype)
            handler = client_app.train if kind == "train" else client_app.evaluate
            replies.append(raw_from_message(handler(msg, self.contexts[n])))
        return replies


def write_sim_config(
    path: Path, corpus: Path, institutions: list[dict[str, Any]], **federation: Any
) -> Path:
    base = dict(
        preset="debug",
        tokenizer="byte",
        rounds=2,
        inner_steps=3,
        batch_size=2,
        seq_len=32,
        warmup_steps=1,
        eval_every=1,
        eval_max_tokens=64,
    )
    doc = {
        "corpus": str(corpus),
        "federation": {**base, **federation},
        "institutions": institutions,
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path
