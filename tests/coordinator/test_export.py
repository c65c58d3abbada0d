"""`step-coord export` of a federated run: a Hugging Face folder with a model card and a
training summary whose numbers are the run's own (summary.json, metrics.jsonl)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from coordinator.cli import app as coord
from coordinator.config import load_federation_config
from coordinator.rounds import RoundRunner
from coordinator.training_summary import TrainingSummary
from tests.local_federation import LocalTransport, write_sim_config

runner = CliRunner()
INSTITUTIONS = [
    {
        "name": "hellas",
        "description": "Greek university",
        "kind": "university",
        "languages": {"el": 1.0, "de": 0.5},
    },
    {"name": "baltic", "description": "Baltic alliance", "languages": {"et": 1.0, "de": 0.5}},
]


@pytest.fixture(scope="module")
def run_dir(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    cfg_file = write_sim_config(tmp / "sim.yaml", tiny_corpus, INSTITUTIONS, rounds=2)
    run = tmp / "run"
    RoundRunner(load_federation_config(cfg_file), run, LocalTransport(cfg_file, run, 2)).run()
    shutil.copy(cfg_file, run / "sim.yaml")  # as step-sim keeps it
    return run


def test_the_card_and_summary_carry_the_runs_own_numbers(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    result = runner.invoke(coord, ["export", str(out), "--run", str(run_dir), "--license",
                                   "apache-2.0", "--name", "step-test"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    doc = json.loads((out / "training_summary.json").read_text())
    s = TrainingSummary.model_validate(doc)  # the schema (extra keys, types) holds
    schema = json.loads((out / "training_summary.schema.json").read_text())
    assert set(schema["required"]) <= set(doc) and schema["additionalProperties"] is False
    assert s.training_tokens == summary["tokens"] == 2 * 2 * 3 * 2 * 32
    assert s.tokens_per_language == summary["tokens_per_language"]
    assert s.evaluation.bits_per_byte == summary["bpb"]
    assert s.evaluation.mean_bits_per_byte == pytest.approx(summary["mean_bpb"])
    assert s.compute.parameters == summary["params"]
    assert s.compute.flops == s.compute.flops_per_token * summary["tokens"]
    per_node = {i.name: i for i in s.institutions}
    rounds = [r for r in records if r["kind"] == "round"]
    for name in ("hellas", "baltic"):
        assert per_node[name].rounds == sum(name in r["node_wall_s"] for r in rounds) == 2
        assert per_node[name].tokens == 2 * 3 * 2 * 32 and not per_node[name].tokens_expected
    assert per_node["hellas"].languages == ["de", "el"]
    kinds = {k: (v.institutions, v.tokens, v.expected)
             for k, v in s.tokens_per_institution_kind.items()}  # fmt: skip
    assert kinds == {"not declared": (["baltic"], 2 * 3 * 2 * 32, False),
                     "university": (["hellas"], 2 * 3 * 2 * 32, False)}  # fmt: skip
    manifest = Path(str(yaml.safe_load((run_dir / "sim.yaml").read_text())["corpus"]))
    sources = json.loads((manifest / "MANIFEST.json").read_text()).get("sources", {})
    assert [d.name for d in s.public_datasets] == sorted(sources)
    for lang in ("de", "el", "et"):  # bytes: one character is one or two tokens
        assert 0.4 < s.chars_per_token[lang] <= 1.0
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["language"] == s.languages
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert {m["name"]: m["value"] for m in metrics} == {
        f"bits per byte ({k})": round(v, 4) for k, v in sorted(summary["bpb"].items())
    }
    assert f"{summary['tokens']:,}" in card and "Secure aggregation: off" in card
    assert "what an institution's private text contained" in card
    assert f"| university | hellas | {2 * 3 * 2 * 32:,} |" in card


def test_transformers_loads_the_export(run_dir: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert runner.invoke(coord, ["export", str(out), "--run", str(run_dir)]).exit_code == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4


def test_a_folder_that_is_no_federated_run_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(coord, ["export", str(tmp_path / "x"), "--run", str(tmp_path)])
    assert result.exit_code == 2 and "neither a checkpoint folder" in result.stderr
