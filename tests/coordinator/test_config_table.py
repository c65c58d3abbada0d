"""coordinator.yaml: every bad setting is refused by `step-coord start` before anything starts,
with one line naming the file, the key, the value and what is allowed; exit 2, no traceback,
no file changed."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from coordinator.cli import app as coord

runner = CliRunner()
Doc = dict[str, Any]


def fed(**values: Any) -> Callable[[Doc], None]:
    return lambda doc: doc["federation"].update(values)


def listen(**values: Any) -> Callable[[Doc], None]:
    return lambda doc: doc["coordinator"].update(values)


def section(name: str, value: Any) -> Callable[[Doc], None]:
    return lambda doc: doc.update({name: value})


CASES: list[tuple[str, Callable[[Doc], None], str]] = [
    ("port as text", listen(control_port="9093"),
     "coordinator.control_port = '9093': input should be a valid integer"),
    ("rounds as text", fed(rounds="20"),
     "federation.rounds = '20': input should be a valid integer"),
    ("rounds 0", fed(rounds=0), "federation.rounds = 0: must be a positive integer"),
    ("rounds 1.5", fed(rounds=1.5), "federation.rounds = 1.5: input should be a valid integer"),
    ("unknown federation key", fed(roundz=3),
     "unknown key federation.roundz (did you mean rounds?); allowed: aggregation"),
    ("unknown coordinator key", listen(port=1), "unknown key coordinator.port; allowed: "
     "control_port, fleet_address, start_timeout_s"),
    ("strategy", fed(strategy="magic"),
     "federation.strategy = 'magic': input should be 'diloco' or 'fedavg'"),
    ("preset", fed(preset="huge"), "federation.preset = 'huge': choose one of debug"),
    ("update encoding", fed(update_encoding="int9"), "federation.update_encoding = 'int9'"),
    ("broadcast encoding", fed(broadcast_encoding="int8"),
     "federation.broadcast_encoding = 'int8': input should be 'fp32', 'bf16'"),
    ("negative lr", fed(inner_lr=-1.0), "federation.inner_lr = -1.0: must be positive"),
    ("lr as a word", fed(inner_lr="fast"), "federation.inner_lr = 'fast': input should be a valid"),
    ("bool as text", fed(token_rows="yes"),
     "federation.token_rows = 'yes': input should be a valid boolean"),
    ("address as a number", listen(fleet_address=9092),
     "coordinator.fleet_address = 9092: input should be a valid string"),
    ("address without port", listen(fleet_address="nohost"), "must be HOST:PORT"),
    ("port too large", listen(control_port=70000),
     "coordinator.control_port = 70000: input should be less than 65536"),
    ("same ports", listen(control_port=9092, fleet_address="0.0.0.0:9092"), "must differ"),
    ("start timeout 0", listen(start_timeout_s=0),
     "coordinator.start_timeout_s = 0: input should be greater than 0"),
    ("federation a list", section("federation", [1, 2]),
     "'federation' must be a mapping of settings"),
    ("coordinator a word", section("coordinator", "here"),
     "'coordinator' must be a mapping of settings"),
    ("trim fraction", fed(aggregation="trimmed_mean", trim_fraction=0.7),
     "federation.trim_fraction = 0.7: must be in [0, 0.5)"),
    ("central dp without clip", fed(central_dp_noise=1.0),
     "federation.central_dp_clip = 0.0: must be positive when central_dp_noise > 0"),
    ("secure with a robust rule", fed(secure_aggregation=True, aggregation="median",
                                      update_encoding="fp32"),
     "federation.aggregation = 'median': secure aggregation reveals only the sum"),
    ("secure with int8 updates", fed(secure_aggregation=True),
     "federation.update_encoding = 'int8': with secure aggregation nodes send their update"),
    ("secure with a norm limit", fed(secure_aggregation=True, update_encoding="fp32",
                                     max_update_norm=5.0),
     "federation.max_update_norm = 5.0: the coordinator cannot read a node's norm"),
    ("secure row cap over the grid", fed(secure_row_cap=32),
     "federation.secure_row_cap = 32: must be in [1, 2^secure_bits - 1]"),
    ("drift correction with diloco", fed(drift_correction=True), "needs strategy fedavg"),
    ("seen rows", fed(seen_rows="all"),
     "federation.seen_rows = 'all': input should be 'none', 'embedding'"),
    ("early rounds", fed(early_rounds=-1), "federation.early_rounds = -1: must be >= 0"),
    ("row outer lr negative", fed(outer_lr_rows=-1.0),
     "federation.outer_lr_rows = -1.0: must be >= 0 (0: outer_lr)"),
    ("row outer lr with fedavg", fed(strategy="fedavg", outer_lr_rows=1.5),
     "federation.outer_lr_rows = 1.5: is DiLoCo's (fedavg has no outer lr)"),
]  # fmt: skip


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("template") / "fed"
    assert runner.invoke(coord, ["init", str(folder)]).exit_code == 0
    return folder


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize(("name", "edit", "needle"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_setting_is_one_line(
    template: Path, tmp_path: Path, name: str, edit: Callable[[Doc], None], needle: str
) -> None:
    folder = tmp_path / "fed"
    shutil.copytree(template, folder)
    config = folder / "coordinator.yaml"
    doc = yaml.safe_load(config.read_text())
    edit(doc)
    config.write_text(yaml.safe_dump(doc))
    before = _snapshot(folder)
    result = runner.invoke(coord, ["start", "--dir", str(folder)])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: {config}: ") or "coordinator.yaml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert _snapshot(folder) == before


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 20


def test_yaml_1_1_floats_without_a_dot_are_numbers(template: Path) -> None:
    """PyYAML reads `1e-3` as text; it is still the number the admin meant."""
    from coordinator.config import federation_from_dict

    assert federation_from_dict({"inner_lr": "1e-3"}, "x").inner_lr == 1e-3
