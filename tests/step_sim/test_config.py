from pathlib import Path

import pytest
import yaml

from node.settings import LanguageSlice
from step_common.errors import StepError
from step_sim.config import Institution, institution_slices, load_sim_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_example_is_valid_and_covers_the_eu_languages() -> None:
    sim = load_sim_config(ROOT / "examples" / "sim-eu8.yaml")
    assert len(sim.names) == 8
    from step_model.corpus import EU_LANGUAGES

    assert set(sim.languages()) == set(EU_LANGUAGES) - {"mt"}  # no Maltese text in STEP-35
    fed = sim.federation
    assert fed.total_inner_steps == 796
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
            "input should be 'diloco' or 'fedavg'",
        ),
        (
            {
                "federation": {"nonsense": 1},
                "institutions": [{"name": "a", "languages": {"de": 1}}],
            },
            r"unknown key federation\.nonsense; allowed: aggregation, aggregation_clip",
        ),
        ({"institutions": []}, "at least 1 item"),
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
        ({"colour": 1, "institutions": [{"name": "a", "languages": {"de": 1}}]}, "unknown key"),
    ],
)
def test_bad_configs_name_the_file_and_the_key(
    tmp_path: Path, doc: dict[str, object], message: str
) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(StepError, match=message) as err:
        load_sim_config(path)
    assert "sim.yaml" in str(err.value)


def institutions(*languages: dict[str, float]) -> list[Institution]:
    return [Institution(name=f"i{k}", languages=langs) for k, langs in enumerate(languages)]


def test_shared_languages_get_disjoint_consecutive_slices() -> None:
    a, b = institution_slices(institutions({"en": 0.25, "el": 1.0}, {"en": 0.5}))
    assert a["el"] == LanguageSlice((0.0, 1.0), (0.0, 1.0))
    assert a["en"].train == (0.0, 0.25) and b["en"].train == (0.25, 0.75)
    # held-out text is split in the same proportions and covers all of it
    assert a["en"].valid == pytest.approx((0.0, 1 / 3))
    assert b["en"].valid == pytest.approx((1 / 3, 1.0))


def test_shares_over_one_are_refused() -> None:
    with pytest.raises(StepError, match=r"'en': 1\.4.*more than 1"):
        institution_slices(institutions({"en": 0.7}, {"en": 0.7}))


def test_each_institution_gets_a_node_yaml_that_gives_its_slices(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    """The nodes of a simulation read node configs only: what step-sim writes for each
    institution loads as a node.yaml and holds the institution's slices and privacy."""
    from node.node_config import load_node_file
    from step_sim.node_files import write_node_files

    doc = {
        "corpus": str(tiny_corpus),
        "privacy": {"epsilon": 8.0, "delta": 1e-6, "rounds": 2},
        "institutions": [
            {"name": "a", "languages": {"de": 0.25, "el": 1.0}},
            {"name": "b", "languages": {"de": 0.5}, "privacy": None},
        ],
    }
    sim = load_sim_config(write(tmp_path, doc))
    folder = write_node_files(sim, tmp_path / "run")
    a, b = (load_node_file(folder / f"{i}.yaml", simulated=True).settings for i in (0, 1))
    slices = institution_slices(sim.institutions)
    assert (a.languages, b.languages) == (slices[0], slices[1])
    assert a.privacy is not None and a.privacy.epsilon == 8.0 and b.privacy is None
    assert a.state_dir == (tmp_path / "run" / "nodes" / "a").resolve() and a.key is None
    assert [s.languages for s in sim.node_settings(tmp_path / "run")] == slices
