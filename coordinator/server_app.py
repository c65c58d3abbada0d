"""The Flower ServerApp of the coordinator (Message API).

Reads the federation YAML named by the run config (``config-file``), writes checkpoints and
metrics into ``run-dir``, and runs the round loop over Flower's Grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.authorized_run import authorize
from coordinator.config import load_corpus_setting, load_federation_config
from coordinator.control_client import ControlClient
from coordinator.delivery import Sessions
from coordinator.deployment import FederationFolder, read_process_state
from coordinator.flower_transport import GridTransport
from coordinator.privacy_reports import SignedReports
from coordinator.registry import Registry
from coordinator.rounds import RoundRunner
from coordinator.tls import TlsFiles
from step_common.errors import StepError
from step_common.malloc import return_freed_memory
from step_fed import protocol as P
from step_fed.secagg.roster import ROSTER

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return_freed_memory()  # the round loop's memory stays flat in the number of nodes
    config_file = context.run_config.get(P.RUN_CONFIG_FILE)
    run_dir = context.run_config.get(P.RUN_DIR)
    if not config_file or not run_dir:
        raise StepError(
            f"the run config needs {P.RUN_CONFIG_FILE!r} and {P.RUN_DIR!r}: start runs with "
            "step-sim or step-coord, or pass them with `flwr run . --run-config`"
        )
    config_path, run_path = app_path(str(config_file)), app_path(str(run_dir))
    registry = str(context.run_config.get(P.RUN_REGISTRY, "") or "")
    if registry:  # a deployment (step-coord): serve only the run step-coord started
        authorize(Path(registry), context.run_id, [config_path, run_path])
    cfg = load_federation_config(config_path)
    resume = bool(context.run_config.get(P.RUN_RESUME, False))
    enrolled = enrolled_names(Path(registry)) if registry else None
    sessions = node_sessions(Path(registry)) if registry else None
    transport = GridTransport(grid, cfg.round_timeout_s, enrolled, sessions)
    corpus = load_corpus_setting(config_path)
    reports = SignedReports(Path(registry)) if registry else None
    roster = Path(registry) / ROSTER if registry else None  # step-coord enroll writes it
    RoundRunner(
        cfg, run_path, transport, resume=resume, corpus=corpus, reports=reports, roster=roster
    ).run()


def enrolled_names(folder: Path) -> Callable[[int], str | None]:
    """Node id -> enrolled name, read afresh per reply (enrollments change during a run)."""

    def name_of(node_id: int) -> str | None:
        return Registry(folder).name_of(node_id)

    return name_of


def node_sessions(folder: Path) -> Sessions:
    """Node id -> when it was last let in, from the SuperLink's Control API (loopback, the
    federation CA): a new value means the node restarted (delivery.py)."""
    fed = FederationFolder(folder)
    client: list[ControlClient] = []

    def sessions() -> dict[int, str] | None:
        try:
            if not client:
                state = read_process_state(fed)
                if state is None:
                    return None
                client.append(ControlClient(state.control_port, TlsFiles(fed.tls).ca_cert))
            return {n.node_id: n.activated for n in client[0].nodes()}
        except Exception as e:  # a failed look only delays noticing a restart
            logging.getLogger("step.coordinator").info("node sessions not read: %s", e)
            return None

    return sessions


def app_path(value: str) -> Path:
    """Paths in the run config are absolute (step-sim, step-coord) or relative to the app root
    (``flwr run .`` with the defaults of pyproject.toml)."""
    path = Path(value)
    return path if path.is_absolute() else Path(__file__).resolve().parent.parent / path
