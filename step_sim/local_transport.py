"""An in-process federation: the coordinator's round loop talking to the node's ClientApp
functions directly, through real Flower Message objects but no SuperLink or Ray.

The arithmetic is exactly the deployed one (same ServerApp round loop, same ClientApp handlers);
only the transport is a function call. Tests and parameter sweeps (bench/fed_sweep.py) use it:
it starts in a second and runs the nodes one after another in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.flower_transport import message_content, raw_from_message
from node import client_app, secure_client
from step_fed import protocol as P
from step_fed.transport import Extra, Kind, RawReply, Weights, message_type
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
        self.drop_at: set[tuple[str, int]] = set()  # (kind, node id): no answer to that kind
        self.tamper: Callable[[str, int, Message], Message] | None = None
        """Tests: what a malicious coordinator (or network) does to a reply it relays."""
        self.resent: list[str] = []  # nodes here never restart mid-round
        self.names = {100 + i: name for i, name in enumerate(sim.names)}

    def name_of(self, node_id: int) -> str | None:
        return self.names.get(node_id)

    def node_ids(self, minimum: int, timeout_s: float) -> list[int]:
        return sorted(self.contexts)

    def send(
        self,
        kind: Kind,
        node_ids: list[int],
        weights: Weights,
        config: dict[str, Any],
        extra: Extra | None = None,
    ) -> Iterator[RawReply]:
        """Each node's reply, one after the other, as it is made."""
        handler = HANDLERS[kind]
        for n in node_ids:
            if n in self.drop or (kind, n) in self.drop_at:
                continue
            own = None if extra is None else extra.get(n, {})
            content = message_content(weights, config, own)
            msg = Message(content, dst_node_id=n, message_type=message_type(kind))
            reply = handler(msg, self.contexts[n])
            if self.tamper is not None:
                reply = self.tamper(kind, n, reply)
            yield raw_from_message(reply, n)


HANDLERS = {"train": client_app.train, "evaluate": client_app.evaluate, **secure_client.STAGES}
