"""A federation folder: what ``step-coord init`` creates and every other command reads.

Layout (all paths relative to the folder)::

    coordinator.yaml        federation: training settings; coordinator: network settings
    registry.json           enrolled institutions (registry.py)
    tls/                    ca.crt and federation.pub (give them to node operators), ca.key,
                            server.crt, server.key, federation.key (the signing key)
    audit.jsonl, audit.head the signed audit log (audit.py)
    run/                    checkpoints and metrics.jsonl of the training run
    state/                  SuperLink database, Flower's home, the generated Flower App,
                            coordinator.json (the running coordinator: pid, ports, run id)
    logs/                   superlink.log (SuperLink, ServerApp, CLI calls)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from step_common.errors import StepError
from step_common.fileio import atomic_write_json, read_yaml
from step_common.signatures import PRIVATE_KEY, PUBLIC_KEY
from step_common.typed_config import STRICT, YamlFloat, parse_section
from step_launch.processes import pid_alive

CONFIG = "coordinator.yaml"


class CoordinatorSettings(BaseModel):
    """The ``coordinator:`` section of coordinator.yaml: where the coordinator listens."""

    model_config = STRICT

    fleet_address: str = "0.0.0.0:9092"
    """Where nodes connect (gRPC over TLS). Open this port in the firewall."""
    control_port: int = Field(default=9093, gt=0, lt=65536)
    """Loopback-only port of Flower's Control API (the flwr CLI, step-coord) and Runtime API
    (the ServerApp). It is never exposed: only the coordinator machine can manage the run."""
    start_timeout_s: YamlFloat = Field(default=120.0, gt=0)
    """How long `step-coord start` waits for the SuperLink to come up."""

    @model_validator(mode="after")
    def _check(self) -> CoordinatorSettings:
        host, sep, port = self.fleet_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StepError(
                f"coordinator.fleet_address {self.fleet_address!r} must be HOST:PORT, "
                "e.g. 0.0.0.0:9092"
            )
        if self.control_port == int(port):
            raise StepError("coordinator.control_port must differ from the fleet_address port")
        return self

    @property
    def fleet_port(self) -> int:
        return int(self.fleet_address.rpartition(":")[2])


def coordinator_settings(path: Path) -> CoordinatorSettings:
    data = read_yaml(path, "run `step-coord init DIR` first, or pass --dir DIR") or {}
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected the settings `step-coord init` wrote (a mapping)")
    return parse_section(CoordinatorSettings, data.get("coordinator"), str(path), "coordinator")


@dataclass(frozen=True)
class FederationFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def signing_key(self) -> Path:
        return self.tls / PRIVATE_KEY

    @property
    def verify_key(self) -> Path:
        return self.tls / PUBLIC_KEY

    @property
    def database(self) -> Path:
        return self.state / "superlink.db"

    @property
    def control_lock(self) -> Path:
        """Held while the SuperLink's registrations are changed or checked (enroll, revoke,
        and the guard of a running coordinator), so neither undoes the other's half-done work."""
        return self.state / ".control.lock"

    @property
    def process_file(self) -> Path:
        return self.state / "coordinator.json"

    def require(self) -> FederationFolder:
        if not self.config.is_file():
            raise StepError(
                f"{self.root} is not a federation folder (no {CONFIG}): run "
                "`step-coord init DIR` first, or pass --dir DIR"
            )
        return self


@dataclass
class ProcessState:
    """What a running (or the last) `step-coord start` wrote about itself."""

    pid: int
    status: str
    """starting, running, completed, failed, stopped."""
    started_at: float
    fleet_address: str
    control_port: int
    run_id: int | None = None
    ended_at: float | None = None
    details: str = ""

    def save(self, folder: FederationFolder) -> None:
        atomic_write_json(folder.process_file, asdict(self))

    @property
    def alive(self) -> bool:
        return self.ended_at is None and pid_alive(self.pid)


def read_process_state(folder: FederationFolder) -> ProcessState | None:
    try:
        data: dict[str, Any] = json.loads(folder.process_file.read_text(encoding="utf-8"))
        return ProcessState(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None  # a coordinator killed mid-write of an older format: treat as not running


CONFIG_TEMPLATE = """\
# STEP federation "{name}": written by `step-coord init`. Edit, then `step-coord start`.
# Every federation key and its default is documented in coordinator/config.py.

federation:
  preset: {preset}          # model size: debug, tiny, small, base, 1b, 7b (step-model info)
  tokenizer: byte           # 'byte' or the path of a tokenizer.json on this machine
  strategy: diloco          # diloco (outer Nesterov SGD) or fedavg (mean of node weights)
  rounds: {rounds}
  inner_steps: {inner_steps}  # H: local steps per node per round
  batch_size: 8             # sequences per node per inner step
  seq_len: 128
  inner_lr: 3.0e-3
  outer_lr: 1.0
  outer_momentum: 0.5
  update_encoding: int8     # updates up: fp32, bf16, int8 (1 byte per parameter), int4, int2,
                            #   or sparse top<K>-sign / top<K>-int4 (K of every 256 values)
  broadcast_encoding: int8-delta  # weights down: fp32, bf16, or <encoding>-delta (the change)
  eval_every: 5             # federated evaluation every K rounds (and after the last)
  min_nodes: {min_nodes}              # updates needed per round (a restarted node is waited for)
  round_timeout_s: 600      # a round waits this long for replies, then goes on without stragglers
  update_memory_mib: 2048   # updates waiting for their turn beyond this wait on disk (run folder)
  secure_aggregation: false # true: the coordinator learns only the sum of the updates (README
                            #   "Secure aggregation"; needs update_encoding fp32)

coordinator:
  fleet_address: "{fleet_address}"  # nodes connect here: gRPC over TLS (open it in the firewall)
  control_port: {control_port}  # loopback only: Control API (step-coord, the ServerApp)
"""
