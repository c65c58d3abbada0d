import pytest

from node.settings import LanguageSlice, institution_slices
from step_common.errors import StepError


def test_shared_languages_get_disjoint_consecutive_slices() -> None:
    insts = [
        {"name": "a", "languages": {"en": 0.25, "el": 1.0}},
        {"name": "b", "languages": {"en": 0.5}},
    ]
    a, b = institution_slices(insts, "cfg")
    assert a["el"] == LanguageSlice((0.0, 1.0), (0.0, 1.0))
    assert a["en"].train == (0.0, 0.25) and b["en"].train == (0.25, 0.75)
    # held-out text is split in the same proportions and covers all of it
    assert a["en"].valid == pytest.approx((0.0, 1 / 3)) and b["en"].valid == pytest.approx(
        (1 / 3, 1.0)
    )


@pytest.mark.parametrize(
    ("languages", "message"),
    [({"en": 1.5}, "must be in"), ({"EN": 0.5}, "not a language code"), ({}, "must map")],
)
def test_bad_shares_are_named(languages: dict[str, float], message: str) -> None:
    with pytest.raises(StepError, match=message):
        institution_slices([{"name": "a", "languages": languages}], "cfg.yaml")


def test_shares_over_one_are_refused() -> None:
    insts = [{"name": "a", "languages": {"en": 0.7}}, {"name": "b", "languages": {"en": 0.7}}]
    with pytest.raises(StepError, match=r"cfg\.yaml.*'en': 1\.4.*more than 1"):
        institution_slices(insts, "cfg.yaml")
