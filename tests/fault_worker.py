"""One federation in one process, for the fault-injection tests (tests/coordinator/test_faults.py):

    python -m tests.fault_worker CONFIG RUN_DIR [--resume]

The coordinator's round loop and every node (in-process transport) run here, so a SIGKILL of
this process kills the coordinator and the nodes at the same instant, wherever they are:
training, writing node state, committing a checkpoint, appending metrics. Prints "ready S" once
the run is set up (S: seconds since the process started, imports and checkpoint loading and
verification included), then runs to the end.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from coordinator.config import load_federation_config  # noqa: E402
from coordinator.rounds import RoundRunner  # noqa: E402
from step_sim.local_transport import LocalTransport  # noqa: E402


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
    print(f"ready {time.perf_counter() - T0:.2f}", flush=True)
    runner.run()


if __name__ == "__main__":
    main()
