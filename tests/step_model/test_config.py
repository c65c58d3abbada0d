import pytest

from step_common.errors import StepError
from step_model.config import NOMINAL_PARAMS, PRESETS, ModelConfig, preset
from step_model.model import Transformer


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_count_within_ten_percent_of_its_name(name: str) -> None:
    params = PRESETS[name].num_params()
    assert abs(params / NOMINAL_PARAMS[name] - 1) <= 0.10, (name, params)


def test_debug_is_under_one_million_parameters() -> None:
    assert PRESETS["debug"].num_params() < 1_000_000


@pytest.mark.parametrize("name", ["debug", "tiny"])
def test_config_count_equals_the_model_count(name: str) -> None:
    cfg = preset(name)
    assert Transformer(cfg).num_params() == cfg.num_params()


def test_gqa_count_equals_the_model_count() -> None:
    cfg = ModelConfig(vocab_size=100, dim=64, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=96)
    assert Transformer(cfg).num_params() == cfg.num_params()


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(StepError, match="debug, tiny, small"):
        preset("huge")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 100, "n_heads": 3}, "divisible"),
        ({"n_kv_heads": 3}, "multiple"),
        ({"dim": 0}, "positive"),
    ],
)
def test_bad_shapes_are_refused(kwargs: dict[str, int], message: str) -> None:
    base = dict(vocab_size=10, dim=64, n_layers=1, n_heads=4, n_kv_heads=4, ffn_dim=32)
    with pytest.raises(StepError, match=message):
        ModelConfig(**{**base, **kwargs})


def test_from_dict_rejects_unknown_keys() -> None:
    data = {**PRESETS["debug"].to_dict(), "colour": "blue"}
    with pytest.raises(StepError, match="colour"):
        ModelConfig.from_dict(data)
