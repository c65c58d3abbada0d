"""torchrun's elastic agent for the node's workers (`python -m node.worker_agent` takes
torchrun's arguments).

It is torchrun with one setting changed: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``. By default
the agent hosts one TCP store for the whole life of the group and hands it to every generation
of workers it starts; the workers' process-group keys carry no generation, so after a restart
worker 0 can read the address a killed worker 1 published and fail on "Connection refused"
(gloo connectFullMesh) before the new worker 1 overwrites it, again on each restart. With the
setting, worker 0 of each generation hosts a fresh store at a port the rendezvous hands out.
"""

from __future__ import annotations

import os

from torch.distributed.run import main

if __name__ == "__main__":
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    main()
