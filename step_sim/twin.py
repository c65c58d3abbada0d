"""Which settings the centralized twin reads: when an earlier twin can stand for a new one.

`step-sim --centralized` trains synchronous data parallelism on the pooled data of a config's
institutions for the federation's steps. Many federation settings never reach it (the outer
optimizer, the encodings, the aggregation rule...), so a bench that tunes only those can reuse
the twins it already trained (``bench/fed_vs_central.py --baselines``) instead of spending as
long again on identical baselines. The comparison is on the run folders' resolved ``sim.yaml``
and their tokenizer files, so two configs that only spell the same run differently (``bpe:2048``
against the file it trains) still match, and anything not listed here must be equal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from coordinator.config import federation_from_dict
from step_common.errors import StepError
from step_common.fileio import read_yaml

FEDERATION_ONLY = frozenset(
    {
        "strategy", "outer_lr", "outer_momentum", "outer_lr_rows", "min_nodes", "round_timeout_s",
        "update_encoding", "broadcast_encoding", "token_rows", "seen_rows", "drift_correction",
        "max_update_norm", "update_memory_mib", "aggregation", "trim_fraction",
        "aggregation_clip", "filter_cosine", "central_dp_noise", "central_dp_clip",
        "central_dp_delta", "secure_clip", "secure_range", "secure_bits",
        "secure_row_cap", "secure_degree", "secure_threshold", "secure_min_survivors",
    }
)  # fmt: skip
"""Federation keys step_sim/centralized.py and the node data it loads never read
(tests/step_sim/test_twin.py checks that neither names one; ``secure_aggregation`` is left
out: node_files.py reads it, if only for key paths). ``inner_lr`` is not here either: it is
the twin's lr when the config sets no ``centralized_lr``, so twin_settings replaces both by
the lr the twin trains with."""

SCHEDULE = ("rounds", "early_rounds", "early_inner_steps", "inner_steps")
"""How the federation cuts its steps into rounds. The twin trains ``total_inner_steps`` steps,
each on every institution's batch of that step, with the learning rate of that step: how the
steps fall into rounds decides only where it evaluates on the way, not the model it ends with
(tests/step_sim/test_twin.py trains two twins to check). twin_settings keeps the total."""


def twin_settings(run_dir: Path) -> dict[str, Any]:
    """The settings of a step-sim run folder that decide its centralized twin."""
    doc = read_yaml(run_dir / "sim.yaml", "not a step-sim run folder")
    fed = dict(doc["federation"])
    steps = federation_from_dict(fed, str(run_dir / "sim.yaml")).total_inner_steps
    fed = {k: v for k, v in fed.items() if k not in SCHEDULE} | {"total_inner_steps": steps}
    # SimConfig.baseline_lr: the twin's peak lr.
    inner_lr = fed.pop("inner_lr")
    doc["centralized_lr"] = doc.get("centralized_lr") or inner_lr
    fed["tokenizer"] = _tokenizer_digest(run_dir, str(fed["tokenizer"]))
    doc["federation"] = {k: v for k, v in fed.items() if k not in FEDERATION_ONLY}
    doc.pop("description", None)
    return dict(doc)


def _tokenizer_digest(run_dir: Path, spec: str) -> str:
    """The tokenizer's bytes, hashed: a run that trained one keeps its copy in the run folder
    (a path that differs from run to run); one given a file reads that file. A spec that is
    neither (``byte``) stands for itself."""
    for path in (run_dir / Path(spec).name, Path(spec)):
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    return spec


def twin_differences(run_dir: Path, twin_dir: Path) -> list[str]:
    """The settings (``federation.seed``...) in which the twin run ``twin_dir`` differs from
    the one ``run_dir``'s config would train; empty: it is the same baseline."""
    if not (twin_dir / "summary.json").is_file():
        raise StepError(
            f"{twin_dir}: no summary.json (not a finished step-sim --centralized run): "
            "point --baselines at an earlier bench's --out folder"
        )
    mine, theirs = twin_settings(run_dir), twin_settings(twin_dir)
    return sorted(_differences(mine, theirs, ""))


def _differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{path}{k}.")]
    return [] if a == b else [path.rstrip(".")]
