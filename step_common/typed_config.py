"""Reading a section of a user's YAML file into a typed pydantic model, with one-line errors.

Every file a user writes (coordinator.yaml, ...) is a pydantic v2 model: unknown keys are
refused (``extra="forbid"``), types are strict (``rounds: "20"`` is an error, not 20), choices
and bounds are declared with the field. A problem becomes one line naming the file, the key
path, the value, what is wrong and what is allowed; rules that tie several keys together raise
StepError from the model's own validator and get the file prepended.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, ValidationError

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

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
LANG_PATTERN = r"^[a-z]{2,3}$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""An institution's name: a folder name of letters, digits, '-', '_', '.' (at most 64)."""

LangCode = Annotated[str, StringConstraints(pattern=LANG_PATTERN)]
"""An ISO 639 language code as the corpus names its folders: 'de', 'ast'."""

_PATTERN_HINTS = {
    NAME_PATTERN: "must be a short name of letters, digits, '-', '_' or '.'",
    LANG_PATTERN: "is not a language code like 'de'",
}


def parse_section(model: type[M], data: Any, source: str, section: str = "") -> M:
    """``data`` (a YAML mapping, or None for an absent section) as ``model``; ``section`` is
    the key path of the mapping in the file ('' for a whole file)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        what = f"'{section}'" if section else "the file"
        layout = f"`{section}:` followed by indented " if section else ""
        raise StepError(
            f"{source}: {what} must be a mapping of settings ({layout}`key: value` lines), "
            f"not {type(data).__name__}"
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
    loc = [str(p) for p in first["loc"]]
    key = _key_path(section, first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = sorted(_fields_at(model, loc[:-1]))
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown key {key}{hint}; allowed: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"{key} is missing: add it ({_doc_at(model, loc)})"
    message = str(first["msg"]).removeprefix("Value error, ")
    message = _PATTERN_HINTS.get(str(first.get("ctx", {}).get("pattern")), message)
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"  # a mapping: its keys are named
    return f"{key}{shown}: {message[:1].lower()}{message[1:]}"


def _key_path(section: str, loc: tuple[int | str, ...]) -> str:
    """``institutions[0].privacy.delta``: list indexes in brackets."""
    path = section
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad key of a mapping: the path names it
            continue
        path += f"[{part}]" if isinstance(part, int) else f"{'.' if path else ''}{part}"
    return path


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The model that holds the keys at ``loc`` (list indexes and dict keys skipped)."""
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            continue  # an index of a list, or a key of a mapping
        nested = _nested_model(field.annotation)
        if nested is None:
            return None
        model = nested
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    held = _model_at(model, loc)
    return list(held.model_fields) if held is not None else []


def _doc_at(model: type[BaseModel], loc: list[str]) -> str:
    held = _model_at(model, loc[:-1])
    field = held.model_fields.get(loc[-1]) if held is not None else None
    doc = (field.description or "") if field is not None else ""
    first_sentence = re.split(r"\.\s+(?=[A-Z])", doc)[0].rstrip(".")
    return " ".join(first_sentence.split()) or "see the README"
