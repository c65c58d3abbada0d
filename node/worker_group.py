"""The node's persistent group of torchrun workers: they wait for rounds and train them.

    torchrun --nproc-per-node G -m node.worker_group NODE_YAML [--simulated]

``step-node start`` launches it (and torchrun restarts the group when a worker dies). Worker 0
watches the inbox (node/worker_inbox.py) and, every few seconds, tells the others what to do
next (a collective: wait, or train this request), so all of them stay in step and none sits in
a collective long enough to time out. A round runs node/sharded_round.py on every worker;
worker 0 writes the reply. A round that fails with a user error (diverged, bad input) is
answered with the error; anything else stops the group, which torchrun then restarts, and the
request, still in the inbox, is trained again from the saved state.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from node.data import NodeData, load_node_data
from node.node_config import load_node_file
from node.settings import NodeSettings
from node.sharded_round import sharded_round
from node.state import NodeStateStore
from node.worker_inbox import HEARTBEAT_S, Reply, Request, WorkerFolder
from step_common.errors import StepError
from step_common.fileio import atomic_write_text
from step_model.tokenizer import Tokenizer, tokenizer_from_json
from step_model.train import pick_device

log = logging.getLogger("step.node.workers")
_POLL_S = 0.2
TIMEOUT = timedelta(minutes=30)
"""Of one collective: a round's inner steps are many collectives, the wait between rounds is
broken into ``HEARTBEAT_S`` pieces."""


def serve(node_file: Path, simulated: bool = False) -> None:
    nf = load_node_file(node_file, simulated=simulated)
    settings = nf.settings
    device = pick_device(settings.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    # On GPUs: NCCL for the model's tensors, gloo for the few host tensors (losses, flags)
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo",
                            timeout=TIMEOUT)  # fmt: skip
    if nf.threads:
        torch.set_num_threads(nf.threads)
    folder = WorkerFolder(settings.state_dir)
    _check_shared(folder)
    lead = dist.get_rank() == 0
    agent = os.getppid()  # torchrun's agent: if it dies, this group is orphaned and must end
    cache: dict[str, tuple[Tokenizer, NodeData]] = {}
    if lead:
        log.info("%d workers ready on %s", dist.get_world_size(), device)
    while True:
        if os.getppid() != agent:
            log.warning("torchrun's agent is gone: the workers stop")
            return
        request = _next(folder) if lead else None
        shared: list[Request | None] = [request]
        dist.broadcast_object_list(shared, src=0)
        request = shared[0]
        if request is None:
            continue
        _train(request, settings, folder, device, cache, lead)


def _check_shared(folder: WorkerFolder) -> None:
    """Workers on several hosts meet in the node's state folder (worker 0 reads the requests
    and commits the state; every worker writes its shard of it): each host must see what
    worker 0 writes there. Worker 0 writes a fresh token; a worker that cannot read it ends
    with the fix (torchrun starts the group again: a filesystem mounted meanwhile is found)."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())) == dist.get_world_size():
        return  # one host: one filesystem
    token = [uuid.uuid4().hex if dist.get_rank() == 0 else ""]
    path = folder.root / "group-token"
    if dist.get_rank() == 0:
        folder.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, token[0])
    dist.broadcast_object_list(token, src=0)
    try:
        seen = path.read_text(encoding="utf-8") == token[0]
    except OSError:
        seen = False
    flags = torch.tensor([1.0 if seen else 0.0])
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    if not seen:
        raise StepError(
            f"worker {dist.get_rank()} on {socket.gethostname()} does not see {path}, which "
            "worker 0 has just written: the node folder (state_dir) must be on a filesystem "
            "every host of the node shares (resources.hosts > 1)"
        )
    if float(flags.item()) < 1.0:
        raise StepError(
            "a worker on another host does not see the node's state folder: see its log"
        )


def _next(folder: WorkerFolder) -> Request | None:
    """Worker 0: a request, or None after ``HEARTBEAT_S`` without one."""
    deadline = time.monotonic() + HEARTBEAT_S
    folder.beat("waiting")
    while time.monotonic() < deadline:
        request = folder.next_request()
        if request is not None:
            folder.beat(f"round {request.cfg.round}")
            return request
        time.sleep(_POLL_S)
    return None


def _train(
    request: Request,
    settings: NodeSettings,
    folder: WorkerFolder,
    device: torch.device,
    cache: dict[str, tuple[Tokenizer, NodeData]],
    lead: bool,
) -> None:
    cfg = request.cfg
    if cfg.tokenizer_sha256 not in cache:
        tokenizer = tokenizer_from_json(cfg.tokenizer, "round config")
        cache[cfg.tokenizer_sha256] = (tokenizer, load_node_data(settings, tokenizer))
    tokenizer, data = cache[cfg.tokenizer_sha256]
    store = NodeStateStore(settings.state_dir)
    try:
        with _beating(folder, f"round {cfg.round}", lead):
            result = sharded_round(
                request.name, data, tokenizer, cfg, request.weights if lead else None, store,
                device, settings.precision, settings.activation_checkpointing, settings.sharding,
                request.private,
            )  # fmt: skip
    except StepError as exc:  # the same on every worker (diverged, refused): answer it
        if lead:
            folder.fail(request, str(exc))
        return
    if lead:
        assert result is not None
        reply = Reply(result.update, result.token_counts, result.tokens_per_language,
                      result.mean_loss, result.wall_s)  # fmt: skip
        folder.reply(request, reply)


class _beating:
    """Worker 0 refreshes the heartbeat from a thread while a round trains."""

    def __init__(self, folder: WorkerFolder, doing: str, lead: bool) -> None:
        self.folder, self.doing, self.lead = folder, doing, lead
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            self.folder.beat(self.doing)

    def __enter__(self) -> None:
        if self.lead:
            self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def main() -> None:
    # force: an imported library has set up the root logger already (at level WARNING)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s", force=True)
    args = sys.argv[1:]
    simulated = "--simulated" in args  # a step-sim institution's node file (no coordinator)
    files = [a for a in args if a != "--simulated"]
    if len(files) != 1:
        sys.exit("usage: torchrun ... -m node.worker_group NODE_YAML [--simulated]")
    try:
        serve(Path(files[0]), simulated)
    except StepError as exc:  # a setup the workers cannot train with: the fix, no traceback
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
