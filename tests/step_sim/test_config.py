from pathlib import Path

import pytest
import yaml

from step_common.errors import StepError
from step_sim.config import load_sim_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_example_is_valid_and_covers_the_eu_languages() -> None:
    sim = load_sim_config(ROOT / "examples" / "sim-eu8.yaml")
    assert len(sim.names) == 8
    from step_model.corpus import EU_LANGUAGES

    assert set(sim.languages()) == set(EU_LANGUAGES) - {"mt"}  # no Maltese text in STEP-35
    fed = sim.federation
    assert fed.total_inner_steps == 798
    quick = sim.with_overrides(rounds=3).federation  # `step-sim --rounds 3`: all rounds early
    assert quick.total_inner_steps == 3 * fed.early_inner_steps


def write(tmp: Path, doc: dict[str, object]) -> Path:
    path = tmp / "sim.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"federation": {"rounds": 0}, "institutions": [{"name": "a", "languages": {"de": 1}}]},
            r"federation\.rounds",
        ),
        (
            {
                "federation": {"strategy": "magic"},
                "institutions": [{"name": "a", "languages": {"de": 1}}],
            },
            "choose one of diloco, fedavg",
        ),
        (
            {
                "federation": {"nonsense": 1},
                "institutions": [{"name": "a", "languages": {"de": 1}}],
            },
            r"unknown key federation\.nonsense; allowed: preset, tokenizer",
        ),
        ({"institutions": []}, "non-empty list"),
        (
            {
                "institutions": [
                    {"name": "a", "languages": {"de": 1}},
                    {"name": "a", "languages": {"el": 1}},
                ]
            },
            "unique",
        ),
        ({"institutions": [{"name": "a b", "languages": {"de": 1}}]}, "short name"),
        ({"colour": 1, "institutions": [{"name": "a", "languages": {"de": 1}}]}, "top-level"),
    ],
)
def test_bad_configs_name_the_file_and_the_key(
    tmp_path: Path, doc: dict[str, object], message: str
) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(StepError, match=message) as err:
        load_sim_config(path)
    assert "sim.yaml" in str(err.value)
