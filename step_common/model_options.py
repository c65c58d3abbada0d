"""Command-line options derived from a config model: one ``--option`` per field, with the field's
type, default and docstring, so a command never repeats what the model declares.

    @app.command()
    @user_errors
    @options_from(TrainConfig, flags={"compile": "--compile"})
    def train(out: Path, config: TrainConfig) -> None: ...

The decorated function declares its own parameters plus one named ``config``; the wrapper's
signature (what Typer reads) has the function's parameters and the model's fields instead of
``config``. A bad value is a one-line StepError naming the flag and what is allowed.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from step_common.errors import StepError
from step_common.typed_config import describe

F = TypeVar("F", bound=Callable[..., Any])


def options_from(
    model: type[BaseModel], *, flags: dict[str, str] | None = None, skip: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """Replace the ``config`` parameter of a command by one option per field of ``model``
    (``flags``: a field's flag when it is not ``--field-name``; ``skip``: fields left at their
    default)."""
    names = dict(flags or {})
    own = list(vars(model).get("__annotations__", {}))  # its own fields first, in its order
    fields = sorted(
        (name for name in model.model_fields if name not in skip),
        key=lambda n: own.index(n) if n in own else len(own),
    )

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)  # the typer.Option objects, not text
        declared = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)  # the wrapper takes keywords only
            for p in signature.parameters.values()
            if p.name != "config"
        ]

        @wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in fields}
            return fn(config=build(model, values, names), **kwargs)

        derived = [_parameter(model, name, names.get(name)) for name in fields]
        params = sorted(derived + declared, key=lambda p: p.default is not inspect.Parameter.empty)
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}  # Typer reads both
        return command  # type: ignore[return-value]

    return decorate


def build(model: type[BaseModel], values: dict[str, Any], flags: dict[str, str]) -> Any:
    """``model`` from option values; a ValidationError becomes one line naming the flag."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = describe(e, model, "")
        if field in model.model_fields:  # not a rule that ties several options together
            message = message.replace(field, flags.get(field, "--" + field.replace("_", "-")), 1)
        raise StepError(message) from None


def _parameter(model: type[BaseModel], name: str, flag: str | None) -> inspect.Parameter:
    field = model.model_fields[name]
    python_type = _cli_type(field.annotation)
    help_text = " ".join((field.description or "").split())
    option = typer.Option(flag, help=help_text) if flag else typer.Option(help=help_text)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=field.get_default(call_default_factory=True),
        annotation=Annotated[python_type, option],
    )


def _cli_type(annotation: Any) -> Any:
    """What Typer can parse: Annotated stripped, Literal choices as text (the model checks
    them), ``X | None`` kept."""
    if typing.get_origin(annotation) is Annotated:
        return _cli_type(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is Literal:
        return str
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [_cli_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] | None
    return annotation
