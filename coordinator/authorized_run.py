"""A deployed ServerApp serves only the run that step-coord started.

Flower's Control API has no authentication (guard.py), so another account on the coordinator's
host could submit this very app (its bytes are no secret) with a run config of its own, pointing
the ServerApp at files it made, or at the federation's own folder as a second run. Before it
reads anything, the ServerApp of a deployed run therefore checks that the federation folder and
the files the run config names belong to the account it runs as and are writable by it alone
(another account cannot make such files), and waits until ``state/coordinator.json`` (written
by step-coord, in that folder) names its own run id. Anything else is refused: no node is sent
anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from coordinator.deployment import FederationFolder, read_process_state
from step_common.errors import StepError

WAIT_S = 60.0
"""step-coord records the run id as soon as `flwr run` returns; the ServerApp starts after."""


def check_owned(path: Path) -> None:
    """``path`` (or, when it does not exist yet, its folder) belongs to this account alone."""
    target = path if path.exists() else path.parent
    st = target.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise StepError(
            f"{target} does not belong to this account alone (owner uid {st.st_uid}, mode "
            f"{st.st_mode & 0o777:o}): this run was not started by step-coord; refused"
        )


def authorize(fed_root: Path, run_id: int, files: list[Path], wait_s: float = WAIT_S) -> None:
    """Return once ``run_id`` is the run step-coord started for ``fed_root``; StepError if not."""
    fed = FederationFolder(fed_root)
    for path in (fed.root, fed.state, fed.process_file, *files):
        check_owned(path)
    deadline = time.monotonic() + wait_s
    while True:
        state = read_process_state(fed)
        if state is not None and state.run_id == run_id:
            return
        if time.monotonic() > deadline:
            recorded = state.run_id if state is not None else None
            raise StepError(
                f"run {run_id} is not the run step-coord started for {fed.root} (it recorded "
                f"{recorded}): it was submitted by someone else; refused"
            )
        time.sleep(0.5)
