"""The flwr CLI's files and answers: TOML that Flower reads back exactly, JSON answers parsed."""

from __future__ import annotations

import math
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from step_common.errors import StepError
from step_launch.flwr_cli import parse_json_stdout
from step_launch.flwr_control import (
    ConfigValue,
    Connection,
    FlwrAnswer,
    FlwrCli,
    RunStatus,
    parse_run_status,
    run_captured,
    run_config_toml,
    write_connection,
    write_run_config,
)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """As Flower flattens a run-config file (flwr.common.config.flatten_dict)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _assert_same(read: dict[str, Any], values: dict[str, ConfigValue]) -> None:
    assert read.keys() == values.keys()
    for key, value in values.items():
        assert type(read[key]) is type(value), key  # a bool stays a bool, 1.0 stays a float
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(read[key])
        else:
            assert read[key] == value, key
            if isinstance(value, float):
                assert math.copysign(1.0, read[key]) == math.copysign(1.0, value), key


AWKWARD: dict[str, ConfigValue] = {
    "quotes": "say \"hi\" and 'bye'",
    "backslashes": "C:\\new\\table \\u0041 \\\\",
    "lines": "first\nsecond\r\n\ttabbed",
    "control": "bell \x07 nul-ish \x1f del \x7f",
    "toml-looking": 'x = 1\n[table]\nkey = "v" # not a comment',
    "unicode": "Ελληνικά · Кириллица · 🦆",
    "empty": "",
    "yes": True,
    "no": False,
    "zero": 0,
    "negative": -17,
    "big": 2**63 - 1,
    "half": 0.5,
    "one": 1.0,
    "tiny": 1e-300,
    "huge": 1.7976931348623157e308,
    "minus-zero": -0.0,
    "infinite": float("-inf"),
    "not-a-number": float("nan"),
    "train.lr": 1e-3,
    "train.inner.steps": 500,
    "train.inner.name": 'inner "loop"',
}


def test_awkward_values_round_trip_through_tomllib() -> None:
    _assert_same(_flatten(tomllib.loads(run_config_toml(AWKWARD))), AWKWARD)


def test_dotted_keys_are_nested_tables_as_in_the_app_config() -> None:
    doc = tomllib.loads(run_config_toml({"train.lr": 0.001, "train.steps": 3, "rounds": 2}))
    assert doc == {"rounds": 2, "train": {"lr": 0.001, "steps": 3}}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b-c", "d_e", "f.g", "f.h", "i.j.k"]),
        st.text()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.floats(allow_nan=False),
    )
)
def test_any_value_round_trips(values: dict[str, ConfigValue]) -> None:
    _assert_same(_flatten(tomllib.loads(run_config_toml(values))), values)


def test_the_written_file_is_what_flwr_reads(tmp_path: Path) -> None:
    path = write_run_config(tmp_path / "run_config.toml", AWKWARD)
    with path.open("rb") as f:
        _assert_same(_flatten(tomllib.load(f)), AWKWARD)


def test_values_toml_cannot_hold_and_clashing_keys_are_step_errors() -> None:
    with pytest.raises(StepError, match=r"value of 'x' is None: use a string"):
        run_config_toml({"x": None})  # type: ignore[dict-item]
    with pytest.raises(StepError, match="extends a key given a value"):
        run_config_toml({"a": 1, "a.b": 2})
    with pytest.raises(StepError, match="also a table"):
        run_config_toml({"a.b": 2, "a": 1})


@pytest.mark.parametrize(
    "connection",
    [
        Connection("step-sim", "127.0.0.1:4711"),
        Connection("federation", "127.0.0.1:9093", Path('/odd "dir"/back\\slash/ca.crt')),
    ],
)
def test_connection_config_round_trips(tmp_path: Path, connection: Connection) -> None:
    path = write_connection(tmp_path / "flwr_home", connection, "Written by a test.")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Written by a test.\n")
    entry: dict[str, Any] = {"address": connection.address}
    if connection.root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(connection.root_certificates)
    assert tomllib.loads(text) == {
        "superlink": {"default": connection.name, connection.name: entry}
    }


def _answer(code: int, stdout: str, stderr: str = "") -> FlwrAnswer:
    return FlwrAnswer(["flwr", "ls"], code, stdout, stderr, parse_json_stdout(stdout))


def test_run_status_is_read_from_flwr_ls() -> None:
    done = '{"success": true, "runs": [{"status": "finished:failed", "status-details": "boom"}]}'
    assert parse_run_status(_answer(0, "banner\n" + done)) == RunStatus("finished:failed", "boom")
    running = '{"success": true, "runs": [{"status": "running", "status-details": "N/A"}]}'
    status = parse_run_status(_answer(0, running))
    assert status == RunStatus("running", "") and not status.finished
    assert parse_run_status(_answer(1, "", "\x1b[31mno such run\x1b[0m")) == RunStatus(
        "unknown", "no such run"
    )
    assert parse_run_status(_answer(0, '{"success": true, "runs": ["odd"]}')).status == "unknown"


def test_calls_end_in_format_json_and_report_why_they_failed() -> None:
    seen: list[list[str]] = []

    def runner(
        argv: Sequence[str | Path], env: dict[str, str], timeout_s: float
    ) -> tuple[int, str, str]:
        seen.append([str(a) for a in argv])
        return 1, '{"success": false, "error-message": "FAB too big"}', "noise"

    cli = FlwrCli("/bin/flwr", {}, runner)
    answer = cli.submit(
        Path("/app"), "conn", run_config=Path("/r.toml"), federation_config="num-supernodes=2"
    )
    assert seen[-1] == ["/bin/flwr", "run", "/app", "conn", "--run-config", "/r.toml",
                        "--federation-config", "num-supernodes=2", "--format", "json"]  # fmt: skip
    assert not answer.ok and answer.why == "FAB too big"
    cli.run_status("conn", 7)
    assert seen[-1] == ["/bin/flwr", "ls", "conn", "--run-id", "7", "--format", "json"]


def test_a_command_that_hangs_is_a_step_error() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(StepError, match="did not answer within 0 s"):
        run_captured(argv, {}, 0.3)
