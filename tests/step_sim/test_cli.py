"""step-sim end to end: the real ServerApp and ClientApp on Flower's simulation engine."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.delivery import RESENDS
from step_common.errors import StepError
from step_sim.cli import app
from tests.local_federation import write_sim_config

INSTITUTIONS = [
    {"name": "hellas", "languages": {"el": 1.0, "de": 0.5}},
    {"name": "baltic", "languages": {"et": 1.0, "de": 0.5}},
]
KEYS = {"mode", "rounds", "nodes", "mean_bpb", "bpb", "bytes_up", "bytes_down", "tokens", "wall_s"}


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def step_sim(cfg: Path, out: Path) -> tuple[dict, str]:
    """Run the step-sim command (Flower's simulation engine); its JSON summary and what it
    printed for people (with --json, on stderr)."""
    exe = Path(sys.executable).parent / "step-sim"
    proc = subprocess.run(
        [str(exe), "--config", str(cfg), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return last_json(proc.stdout), proc.stderr


def test_the_centralized_baseline_has_the_same_report(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = write_sim_config(tmp_path / "sim.yaml", tiny_corpus, INSTITUTIONS, rounds=2)
    result = CliRunner().invoke(
        app, ["--config", str(cfg), "--out", str(tmp_path / "c"), "--centralized", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = last_json(result.stdout)
    assert KEYS <= set(summary) and summary["mode"] == "centralized"
    assert summary["tokens"] == 2 * 2 * 3 * 2 * 32


def test_a_non_empty_run_folder_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = write_sim_config(tmp_path / "sim.yaml", tiny_corpus, INSTITUTIONS)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("x")
    result = CliRunner().invoke(app, ["--config", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "not empty" in result.stderr


def test_the_flower_run_may_last_as_long_as_its_rounds_may(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """step-sim stops a Flower run as stuck only past what its rounds could take (each round and
    the final evaluation round_timeout_s, once more per resend), not after a fixed hour: that
    stopped a healthy --slow run on 2 cores at round 263 of 488."""
    import step_sim.flower_runner as runner

    limits: list[float] = []

    def capture(spec: runner.SimulationSpec, on_poll: object) -> None:
        limits.append(spec.timeout_s)
        raise StepError("stopped before Flower starts")

    monkeypatch.setattr(runner, "run_simulation_app", capture)
    for rounds in (2, 488):
        cfg = write_sim_config(
            tmp_path / f"sim{rounds}.yaml", tiny_corpus, INSTITUTIONS, rounds=rounds,
            round_timeout_s=60.0,
        )  # fmt: skip
        result = CliRunner().invoke(
            app, ["--config", str(cfg), "--out", str(tmp_path / f"r{rounds}")]
        )
        assert "stopped before Flower starts" in result.stderr
    assert limits[1] - limits[0] == 486 * (1 + RESENDS) * 60.0
    assert limits[1] > 3600  # the fixed hour it replaces


def test_a_federated_run_on_flowers_simulation_engine(tiny_corpus: Path, tmp_path: Path) -> None:
    """One institution trains with local DP on two torchrun workers (FSDP2, gloo), the other
    on one device; central DP and int4 both ways: what each shows in the summary."""
    import yaml

    insts = [{**INSTITUTIONS[0], "gpus": 2}, INSTITUTIONS[1]]
    cfg = write_sim_config(
        tmp_path / "sim.yaml", tiny_corpus, insts, rounds=2,
        central_dp_noise=0.5, central_dp_clip=5.0, broadcast_encoding="int4-delta",
        update_encoding="int4",
    )  # fmt: skip
    doc = yaml.safe_load(cfg.read_text())
    doc["institutions"][0]["privacy"] = {"epsilon": 5.0, "delta": 1e-6, "rounds": 2}
    cfg.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    summary, printed = step_sim(cfg, out)
    assert "ready" in (out / "logs" / "workers-hellas.log").read_text()
    assert (out / "nodes" / "hellas" / "rounds" / "round-00000002" / "optimizer-sharded").is_dir()
    assert KEYS <= set(summary)
    assert summary["mode"] == "federated" and summary["rounds"] == 2 and summary["nodes"] == 2
    assert set(summary["bpb"]) == {"de", "el", "et"}
    assert (out / "bpb.png").stat().st_size > 10_000 and (out / "LATEST").is_file()
    kinds = [json.loads(x)["kind"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert kinds == ["round", "eval", "round", "eval"]
    assert set(summary["epsilon"]) == {"hellas"} and 4.9 < summary["epsilon"]["hellas"] <= 5.0
    assert summary["epsilon_central"] > 0 and summary["delta_central"] == 1e-5
    assert "local DP: hellas spent epsilon" in printed
    assert (out / "nodes" / "hellas" / "privacy" / "ledger.json").is_file()
    # int4 both ways through Flower (packed uint8 arrays): round 1 brought no weights (the
    # ClientApps drew them from the seed, bit for bit: nobody was resynced), round 2 only the
    # change, without the tokenizer, in half a byte per parameter
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rounds if r["kind"] == "round"]
    assert train[0]["resynced"] == [] and train[0]["bytes_down"] < 0.2 * train[1]["bytes_down"]
    assert (out / "nodes" / "baltic" / "broadcast").is_dir()
    assert all(r["bytes_up"] > 0 for r in rounds if r["kind"] == "round")
    moved = summary["bytes_up"] + summary["bytes_down"]
    assert summary["allreduce_bytes"] == summary["params"] * 4 * (2 * 3) * 2  # steps x nodes
    assert summary["comm_ratio"] == pytest.approx(summary["allreduce_bytes"] / moved)
    assert f"communication: {summary['comm_ratio']:.1f}x less" in printed
