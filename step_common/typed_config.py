"""Reading a section of a user's YAML file into a typed pydantic model, with one-line errors.

Every file a user writes (coordinator.yaml, ...) is a pydantic v2 model: unknown keys are
refused (``extra="forbid"``), types are strict (``rounds: "20"`` is an error, not 20), choices
and bounds are declared with the field. A problem becomes one line naming the file, the key
path, the value, what is wrong and what is allowed; rules that tie several keys together raise
StepError from the model's own validator and get the file prepended.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from step_common.errors import StepError

M = TypeVar("M", bound=BaseModel)

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)
"""The settings of every user-facing config model."""

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml_float(value: Any) -> Any:
    """PyYAML reads ``1e-3`` (no dot: YAML 1.1) as a string; take it as the number it is."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


YamlFloat = Annotated[float, BeforeValidator(_yaml_float)]


def parse_section(model: type[M], data: Any, source: str, section: str) -> M:
    """``data`` (a YAML mapping, or None for an absent section) as ``model``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StepError(
            f"{source}: '{section}' must be a mapping of settings (`{section}:` followed by "
            f"indented `key: value` lines), not {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise StepError(f"{source}: {describe(e, model, section)}") from None
    except StepError as e:
        raise StepError(f"{source}: {e}") from None


def describe(error: ValidationError, model: type[BaseModel], section: str) -> str:
    """The first problem of ``error`` as 'key = value: what is wrong'."""
    first = error.errors()[0]
    key = ".".join([section, *(str(p) for p in first["loc"])])
    if first["type"] == "extra_forbidden":
        return f"unknown key {key}; allowed: {', '.join(model.model_fields)}"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{key} = {first.get('input')!r}: {message[:1].lower()}{message[1:]}"
