"""In-process calls to the SuperLink's Control API, for the guard's frequent checks.

The guard (guard.py) looks at the SuperLink's runs and node registrations every few seconds;
a ``flwr`` process per look costs about a second of CPU (its imports), which a coordinator on
a small machine would feel. This client makes the same Control API calls as the ``flwr`` CLI
(Flower's ``ControlHttpClient``, TLS with the federation CA) from inside step-coord.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.common.serde import run_from_proto
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    StopRunRequest,
    UnregisterNodeRequest,
)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    fab_id: str
    fab_hash: str
    status: str
    """As the flwr CLI shows it: pending, starting, running, finished:completed|failed|stopped."""
    details: str


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    status: str
    """registered, online, offline, unregistered."""
    activated: str = ""
    """When the node was last let in (a new value after each restart)."""


class ControlClient:
    def __init__(self, control_port: int, ca_cert: Path) -> None:
        self.http = ControlHttpClient.from_server_address(
            server_address=f"127.0.0.1:{control_port}",
            insecure=False,
            root_certificates=Path(ca_cert).read_bytes(),
            interceptors=[
                CliClientHttpInterceptor(),
                RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
            ],
        )

    def runs(self) -> list[RunInfo]:
        res = self.http.ListRuns(ListRunsRequest())
        out = []
        for proto in res.run_dict.values():
            run = run_from_proto(proto)
            s = run.status
            status = f"{s.status}:{s.sub_status}" if s.sub_status else s.status
            out.append(RunInfo(run.run_id, run.fab_id, run.fab_hash, status, s.details))
        return out

    def nodes(self) -> list[NodeInfo]:
        res = self.http.ListNodes(ListNodesRequest())
        return [
            NodeInfo(int(n.node_id), str(n.status), str(n.last_activated_at))
            for n in res.nodes_info
        ]

    def stop(self, run_id: int) -> None:
        self.http.StopRun(StopRunRequest(run_id=run_id))

    def unregister(self, node_id: int) -> None:
        self.http.UnregisterNode(UnregisterNodeRequest(node_id=node_id))

    def close(self) -> None:
        self.http.close()
