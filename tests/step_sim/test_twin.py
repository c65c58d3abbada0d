import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from coordinator.config import FederationConfig
from step_common.errors import StepError
from step_model.checkpoint import load_checkpoint
from step_sim.centralized import run_centralized
from step_sim.config import load_sim_config
from step_sim.twin import FEDERATION_ONLY, twin_differences
from tests.local_federation import write_sim_config

INSTITUTIONS = [{"name": "hellas", "languages": {"el": 1.0}}]


def run_folder(root: Path, name: str, tokenizer: bytes = b"merges", **overrides: Any) -> Path:
    """A finished-looking run folder: the resolved sim.yaml step-sim writes, its tokenizer copy."""
    run = root / name
    run.mkdir()
    centralized_lr = overrides.pop("centralized_lr", 3e-3)
    cfg = write_sim_config(root / f"{name}.yaml", root, INSTITUTIONS, **overrides)
    doc = load_sim_config(cfg).to_yaml_dict()
    doc["federation"]["tokenizer"] = str(run / "tokenizer-bpe2048.json")
    if centralized_lr:
        doc["centralized_lr"] = centralized_lr
    (run / "tokenizer-bpe2048.json").write_bytes(tokenizer)
    (run / "sim.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    (run / "summary.json").write_text("{}", encoding="utf-8")
    return run


def test_settings_only_the_federation_reads_do_not_make_another_baseline(tmp_path: Path) -> None:
    mine = run_folder(tmp_path, "fed", outer_lr=1.0, update_encoding="int1", inner_lr=2.5e-3)
    earlier = run_folder(tmp_path, "twin", outer_lr=0.7, update_encoding="int3", inner_lr=2e-3)
    assert twin_differences(mine, earlier) == []


def test_what_the_baseline_trains_with_must_match(tmp_path: Path) -> None:
    mine = run_folder(tmp_path, "fed", seed=0, inner_lr=2e-3)
    assert twin_differences(mine, run_folder(tmp_path, "s1", seed=1, inner_lr=2e-3)) == [
        "federation.seed"
    ]
    assert twin_differences(mine, run_folder(tmp_path, "tok", tokenizer=b"other")) == [
        "federation.tokenizer"
    ]
    assert twin_differences(mine, run_folder(tmp_path, "lr", centralized_lr=2e-3)) == [
        "centralized_lr"
    ]
    fewer = run_folder(tmp_path, "fewer", early_rounds=1, early_inner_steps=2)  # 2 + 3 steps
    assert twin_differences(mine, fewer) == ["federation.total_inner_steps"]


def test_the_same_steps_cut_into_other_rounds_are_the_same_baseline(tmp_path: Path) -> None:
    mine = run_folder(tmp_path, "fed", rounds=2, inner_steps=3)  # 3 + 3
    earlier = run_folder(tmp_path, "twin", rounds=3, early_rounds=2, early_inner_steps=1,
                         inner_steps=4)  # 1 + 1 + 4  # fmt: skip
    assert twin_differences(mine, earlier) == []


def test_how_steps_fall_into_rounds_does_not_change_the_twins_model(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """What SCHEDULE's docstring claims, trained: 3 + 3 steps and 1 + 1 + 4 end in the same
    weights (only the evaluations on the way differ)."""
    schedules = {
        "even": dict(rounds=2, inner_steps=3),
        "uneven": dict(rounds=3, early_rounds=2, early_inner_steps=1, inner_steps=4),
    }
    weights = {}
    for name, schedule in schedules.items():
        cfg = write_sim_config(tmp_path / f"{name}.yaml", tiny_corpus, INSTITUTIONS, **schedule)
        (tmp_path / name).mkdir()
        summary = run_centralized(load_sim_config(cfg), tmp_path / name)
        weights[name] = load_checkpoint(Path(summary["checkpoint"]), with_optimizer=False).weights
    assert weights["even"].keys() == weights["uneven"].keys()
    for key, w in weights["even"].items():
        assert torch.equal(w, weights["uneven"][key]), key


def test_a_tokenizer_file_given_by_path_is_compared_by_its_bytes(tmp_path: Path) -> None:
    mine = run_folder(tmp_path, "fed")
    earlier = run_folder(tmp_path, "twin")
    (tmp_path / "bpe.json").write_bytes(b"merges")  # what mine trained and copied, by path
    doc = yaml.safe_load((earlier / "sim.yaml").read_text())
    doc["federation"]["tokenizer"] = str(tmp_path / "bpe.json")
    (earlier / "tokenizer-bpe2048.json").unlink()
    (earlier / "sim.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert twin_differences(mine, earlier) == []
    (tmp_path / "bpe.json").write_bytes(b"other merges")
    assert twin_differences(mine, earlier) == ["federation.tokenizer"]


def test_without_centralized_lr_the_federations_inner_lr_is_the_baselines(tmp_path: Path) -> None:
    mine = run_folder(tmp_path, "fed", centralized_lr=0.0, inner_lr=2e-3)
    earlier = run_folder(tmp_path, "twin", centralized_lr=0.0, inner_lr=2.5e-3)
    assert twin_differences(mine, earlier) == ["centralized_lr"]
    assert twin_differences(mine, run_folder(tmp_path, "set", centralized_lr=2e-3)) == []


def test_an_unfinished_baseline_is_refused(tmp_path: Path) -> None:
    mine = run_folder(tmp_path, "fed")
    earlier = run_folder(tmp_path, "twin")
    (earlier / "summary.json").unlink()
    with pytest.raises(StepError, match=r"no summary\.json"):
        twin_differences(mine, earlier)


def test_the_twin_reads_none_of_the_federation_only_settings() -> None:
    """If centralized.py (or the node data it loads) starts reading one of these, reusing an
    earlier baseline would compare against the wrong run: the key must leave the list."""
    assert FEDERATION_ONLY <= set(FederationConfig.model_fields)
    root = Path(__file__).resolve().parents[2] / "step_sim"
    source = (root / "centralized.py").read_text() + (root / "node_files.py").read_text()
    read = {key for key in FEDERATION_ONLY if re.search(rf"\b{key}\b", source)}
    assert read == set()
