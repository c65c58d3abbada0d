"""Simulation configs and node.yaml: every bad setting is refused by the command that reads the
file (`step-sim`, `step-node check`) before anything runs, with one line naming the file, the key
path, the value and what is allowed; exit 2, no traceback, nothing written.
(coordinator.yaml has its own table: tests/coordinator/test_config_table.py.)"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from node.cli import app as node_cli
from step_sim.cli import app as sim_cli

runner = CliRunner()
Doc = dict[str, Any]
Edit = Callable[[Doc], None]

PRIVACY = {"epsilon": 8.0, "delta": 1e-6, "rounds": 3}


def top(**values: Any) -> Edit:
    return lambda doc: doc.update(values)


def inst(i: int, **values: Any) -> Edit:
    return lambda doc: doc["institutions"][i].update(values)


def sim_doc() -> Doc:
    return {
        "federation": {"rounds": 2, "inner_steps": 2},
        "institutions": [
            {"name": "north", "languages": {"de": 0.5, "sv": 1.0}},
            {"name": "south", "languages": {"de": 0.5}},
        ],
    }


SIM_CASES: list[tuple[str, Edit, str]] = [
    ("unknown top-level key", top(colour=1),
     "unknown key colour; allowed: centralized_lr, corpus, description"),
    ("no institutions", top(institutions=[]),
     "institutions = []: list should have at least 1 item"),
    ("institutions missing", lambda d: d.pop("institutions"), "institutions is missing: add it"),
    ("share above 1", inst(0, languages={"de": 1.5}),
     "institutions[0].languages.de = 1.5: input should be less than or equal to 1"),
    ("share as text", inst(0, languages={"de": "half"}),
     "institutions[0].languages.de = 'half': input should be a valid number"),
    ("not a language code", inst(1, languages={"DE": 0.5}),
     "institutions[1].languages.DE = 'DE': is not a language code like 'de'"),
    ("no languages", inst(0, languages={}),
     "institutions[0].languages: dictionary should have at least 1 item"),
    ("shares over one", inst(1, languages={"de": 0.7}),
     "the shares of {'de': 1.2} add up to more than 1"),
    ("name with a space", inst(0, name="north pole"),
     "institutions[0].name = 'north pole': must be a short name of letters"),
    ("repeated names", inst(1, name="north"), "names must be unique, repeated: ['north']"),
    ("unknown institution key", inst(0, weight=2),
     "unknown key institutions[0].weight; allowed: description, gpus, kind, languages, name, "
     "privacy"),
    ("privacy without delta", top(privacy={"epsilon": 8.0, "rounds": 3}),
     "privacy.delta is missing: add it"),
    ("privacy with both noise sources", inst(0, privacy={**PRIVACY, "noise_multiplier": 1.0}),
     "institutions[0].privacy: give exactly one of noise_multiplier"),
    ("privacy accountant", inst(1, privacy={**PRIVACY, "accountant": "gdp"}),
     "institutions[1].privacy.accountant = 'gdp': input should be 'rdp' or 'prv'"),
    ("privacy delta 1", top(privacy={**PRIVACY, "delta": 1}),
     "privacy.delta = 1: input should be less than 1"),
    ("prv with small sigma",
     top(privacy={"epsilon": 8.0, "delta": 1e-6, "noise_multiplier": 0.1, "accountant": "prv"}),
     "too small for the prv accountant"),
    ("centralized lr negative", top(centralized_lr=-1.0),
     "centralized_lr = -1.0: input should be greater than or equal to 0"),
    ("federation rounds as text", lambda d: d["federation"].update(rounds="2"),
     "federation.rounds = '2': input should be a valid integer"),
    ("federation a list", top(federation=[1]),
     "federation = [1]: input should be a valid dictionary"),
    ("corpus a number", top(corpus=3), "corpus = 3: input should be a valid string"),
]  # fmt: skip


def node_doc() -> Doc:
    return {"name": "north", "coordinator": "coord.example.eu:9092", "data": "data"}


NODE_CASES: list[tuple[str, Edit, str]] = [
    ("unknown key", top(gpu=2), "unknown key gpu; allowed: ca, coordinator, data"),
    ("bad name", top(name="a/b"), "name = 'a/b': must be a short name of letters"),
    ("address with a scheme", top(coordinator="https://coord:9092"), "has a scheme"),
    ("address without port", top(coordinator="coord"), "must be HOST:PORT"),
    ("no data", lambda d: d.pop("data"), "data is missing: add it"),
    ("holdout 1", top(holdout_fraction=1), "holdout_fraction = 1: input should be less than 1"),
    ("threads negative", top(resources={"threads": -1}),
     "resources.threads = -1: input should be greater than or equal to 0"),
    ("device tpu", top(resources={"device": "tpu"}),
     "resources.device = 'tpu': input should be 'auto', 'cpu' or 'cuda'"),
    ("backoff as text", top(resources={"max_backoff_s": "soon"}),
     "resources.max_backoff_s = 'soon': input should be a valid number"),
    ("unknown encoding", top(encoding="klingon"), "encoding = 'klingon': not a known text"),
    ("languages a word", top(languages="de"),
     "languages = 'de': must be null (all) or a list of codes"),
    ("languages and parts", top(languages=["de"], language_parts={
        "de": {"train": [0, 0.5], "valid": [0, 0.5]}}), "give languages or language_parts"),
    ("a part out of range", top(language_parts={"de": {"train": [0.5, 0.2], "valid": [0, 1]}}),
     "language_parts.de.train = [0.5, 0.2]: must be [lo, hi] with 0 <= lo < hi <= 1"),
    ("privacy epsilon 0", top(privacy={**PRIVACY, "epsilon": 0}),
     "privacy.epsilon = 0: input should be greater than 0"),
    ("no coordinator", lambda d: d.pop("coordinator"), "coordinator is missing: add"),
]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def _check_one_line(result: Any, path: Path, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {path}: "), result.stderr
    assert needle in result.stderr, result.stderr


@pytest.mark.parametrize(("name", "edit", "needle"), SIM_CASES, ids=[c[0] for c in SIM_CASES])
def test_a_bad_simulation_config_is_one_line(
    tmp_path: Path, tiny_corpus: Path, name: str, edit: Edit, needle: str
) -> None:
    doc = {**sim_doc(), "corpus": str(tiny_corpus)}
    edit(doc)
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(doc))
    before = _snapshot(tmp_path)
    result = runner.invoke(sim_cli, ["--config", str(path), "--out", str(tmp_path / "run")])
    _check_one_line(result, path, needle)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("name", "edit", "needle"), NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_a_bad_node_yaml_is_one_line(tmp_path: Path, name: str, edit: Edit, needle: str) -> None:
    doc = node_doc()
    edit(doc)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(doc))
    before = _snapshot(tmp_path)
    result = runner.invoke(node_cli, ["check", "--dir", str(tmp_path)])
    _check_one_line(result, path.resolve(), needle)
    assert _snapshot(tmp_path) == before


def test_the_tables_are_large_enough() -> None:
    assert len(SIM_CASES) >= 20 and len(NODE_CASES) >= 15
