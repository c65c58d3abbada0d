"""One federation in one process, for the fault-injection tests (tests/coordinator/test_faults.py):

    python -m tests.fault_worker CONFIG RUN_DIR [--resume]

The coordinator's round loop and every node (in-process transport) run here, so a SIGKILL of
this process kills the coordinator and the nodes at the same instant, wherever they are:
training, writing node state, committing a checkpoint, appending metrics. Prints "ready" once
the run is set up, then runs to the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from coordinator.config import load_federation_config
from coordinator.rounds import RoundRunner
from step_sim.local_transport import LocalTransport


def main() -> None:
    cfg_file, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    n = len(yaml.safe_load(cfg_file.read_text(encoding="utf-8"))["institutions"])
    runner = RoundRunner(
        load_federation_config(cfg_file),
        run_dir,
        LocalTransport(cfg_file, run_dir, n),
        resume="--resume" in sys.argv,
    )
    print("ready", flush=True)
    runner.run()


if __name__ == "__main__":
    main()
