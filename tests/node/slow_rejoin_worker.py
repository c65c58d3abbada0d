"""A two-worker torchrun group that fails once and whose worker 1 rejoins 5 s late: worker 0
of the second generation must wait for it, not connect to the killed worker 1's address
(tests/node/test_worker_group.py, node/worker_agent.py)."""

import os
import sys
import time
from datetime import timedelta

import torch.distributed as dist

if __name__ == "__main__":
    rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    if rank == 1 and attempt == 1:
        time.sleep(5)
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
    dist.barrier()
    if rank == 0:
        print(f"generation {attempt} met", flush=True)
    dist.destroy_process_group()
    sys.exit(1 if attempt == 0 else 0)  # the first generation fails: torchrun starts another
