"""A node's own settings: where its text is, which languages (and which part of them) it holds,
where it keeps its state. They come from the node itself, never from the coordinator: from its
node.yaml (node_config.py), which ``step-node init`` writes for an institution and ``step-sim``
writes for each virtual one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.privacy_config import PrivacyConfig


@dataclass(frozen=True)
class LanguageSlice:
    """Fractions [lo, hi) of a language's paragraphs: one range for train/, one for valid/."""

    train: tuple[float, float]
    valid: tuple[float, float]


WHOLE = LanguageSlice((0.0, 1.0), (0.0, 1.0))


@dataclass(frozen=True)
class NodeSettings:
    name: str
    """The institution's name (a folder name: letters, digits, '-', '_', '.')."""
    data: Path
    """A STEP-35 style corpus, or a folder of the institution's own .txt/.jsonl files."""
    languages: dict[str, LanguageSlice] | None
    """Languages held and which part of each; None: every language in ``data``, whole."""
    state_dir: Path
    """Where the node keeps its inner optimizer state and data position between rounds."""
    holdout_fraction: float = 0.05
    """Share of paragraphs held out for evaluation when ``data`` has no valid/ split."""
    privacy: PrivacyConfig | None = None
    """Local differential privacy (DP-SGD with a budget); None: no local DP."""
    device: str = "cpu"
    """Where the node trains and evaluates: 'cpu', 'cuda', or 'auto' (cuda when visible)."""
    encoding: str | None = None
    """Text encoding of the node's own .txt/.jsonl files when they are not UTF-8."""
    key: Path | None = None
    """The node's private key (a deployed node): it signs the privacy ledger and the epsilon
    the node reports. None in a simulation (no keys)."""
    workers: int = 1
    """Torchrun workers that train each round, on all hosts (node.yaml ``resources.gpus`` x
    ``hosts``); 1: the ClientApp trains on its own device."""
    precision: str = "auto"
    """The workers' compute precision: auto (bf16 on GPUs), fp32, bf16."""
    activation_checkpointing: bool = False
    """The workers recompute each block's activations in the backward pass."""
    sharding: str = "auto"
    """The workers: full_shard (FSDP2), replicate, or auto (replicate when it fits)."""
    hosts: int = 1
    """Hosts the workers span (``workers / hosts`` on each); >1: torchrun's c10d rendezvous."""
    rendezvous: str | None = None
    """HOST:PORT of the c10d rendezvous when the workers span several hosts."""
    federation_key: Path | None = None
    """The federation's public signing key (federation.pub): secure aggregation trusts only a
    roster of identity keys signed with it."""
