"""An in-process federation: the coordinator's round loop talking to the node's ClientApp
functions directly, through real Flower Message objects but no SuperLink or Ray.

The arithmetic is exactly the deployed one (same ServerApp round loop, same ClientApp handlers);
only the transport is a function call. Tests and parameter sweeps (bench/fed_sweep.py) use it:
it starts in a second and runs the nodes one after another in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.flower_transport import raw_from_message
from node import client_app
from step_fed import protocol as P
from step_fed.transport import Kind, RawReply, Weights
from step_sim.config import load_sim_config
from step_sim.node_files import write_node_files


class LocalTransport:
    """Delivers each message to the ClientApp of virtual institution ``partition-id``."""

    def __init__(self, config_file: Path, run_dir: Path, n_nodes: int) -> None:
        # Messages are stamped with the sending task's identity; here that is "the ServerApp".
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        sim = load_sim_config(config_file)
        node_files = str(write_node_files(sim, run_dir))
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config={"partition-id": i, "num-partitions": n_nodes},
                state=RecordDict(),
                run_config={
                    P.RUN_CONFIG_FILE: str(config_file),
                    P.RUN_DIR: str(run_dir),
                    P.RUN_NODE_FILES: node_files,
                },
            )
            for i in range(n_nodes)
        }
        self.drop: set[int] = set()  # node ids that do not answer
        self.resent: list[str] = []  # nodes here never restart mid-round
        self.names = {100 + i: name for i, name in enumerate(sim.names)}

    def name_of(self, node_id: int) -> str | None:
        return self.names.get(node_id)

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        return sorted(self.contexts)

    def send(
        self, kind: Kind, node_ids: list[int], weights: Weights, config: dict[str, Any]
    ) -> Iterator[RawReply]:
        """Each node's reply, one after the other, as it is made."""
        for n in node_ids:
            if n in self.drop:
                continue
            content = RecordDict({P.ARRAYS: ArrayRecord(weights), P.CONFIG: ConfigRecord(config)})
            mtype = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
            msg = Message(content, dst_node_id=n, message_type=mtype)
            handler = client_app.train if kind == "train" else client_app.evaluate
            yield raw_from_message(handler(msg, self.contexts[n]), n)
