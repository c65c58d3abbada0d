"""The torchrun workers of the virtual institutions that train on several (CPU) workers.

An institution with ``gpus: N`` (N > 1) in a simulation config trains each round on N gloo
processes, FSDP2-sharded, exactly as a deployed multi-GPU node does (node/worker_group.py):
step-sim starts one torchrun group per such institution before the federation and stops it
after; the ClientApp of that institution hands its rounds to the group through the node's state
folder (node/worker_inbox.py). Logs: ``<run>/logs/workers-<name>.log``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.node_config import load_node_file
from node.supernode import worker_argv
from step_launch.processes import MARKER_ENV, ChildProcesses, new_marker


@contextmanager
def worker_groups(node_files: Path, run_dir: Path) -> Iterator[list[str]]:
    """Start the groups of the node files in ``node_files``; yields the institutions' names."""
    marker = new_marker()
    started = []
    with ChildProcesses(marker) as procs:
        for path in sorted(node_files.glob("*.yaml")):
            nf = load_node_file(path, simulated=True)
            if nf.settings.workers < 2:
                continue
            log_path = run_dir / "logs" / f"workers-{nf.name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", MARKER_ENV: marker}
            with log_path.open("ab") as log:
                procs.spawn(worker_argv(nf, simulated=True), env, log, subprocess.STDOUT)
            started.append(nf.name)
        yield started
