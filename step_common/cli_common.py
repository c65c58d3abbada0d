"""What every STEP command line shares: one-line errors with exit code 2, --json output, tables.

With ``--json`` the human-readable output goes to stderr and stdout carries exactly one line, the
JSON summary, so ``step-model ... --json | jq`` works and "the last line is JSON" holds either way.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from step_common.errors import StepError

P = ParamSpec("P")
R = TypeVar("R")


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
"""Every STEP command line answers -h as well as --help (Typer's context settings)."""


def package_version() -> str:
    try:
        return importlib.metadata.version("step-federated")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def version_callback(prog: str) -> Callable[[bool], None]:
    """The callback of an eager ``--version`` option."""

    def show(value: bool) -> None:
        if value:
            sys.stdout.write(f"{prog} {package_version()}\n")
            raise typer.Exit()

    return show


def add_version_option(app: typer.Typer, prog: str) -> None:
    """``PROG --version`` on a command line of several commands."""

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False,
            "--version",
            callback=version_callback(prog),
            is_eager=True,
            help="Print the version and exit.",
        ),
    ) -> None:
        pass


def command_line(doc: str | None, prog: str, *, commands: bool = True) -> typer.Typer:
    """A STEP command line: -h and --help, ``--version`` (``commands``: it has subcommands; a
    single-command one adds the option to its command), and tracebacks that never print the
    values of locals (one could hold private key bytes)."""
    app = typer.Typer(
        help=doc,
        add_completion=False,
        no_args_is_help=commands,
        pretty_exceptions_show_locals=False,
        context_settings=HELP_OPTIONS,
    )
    if commands:
        add_version_option(app, prog)
    return app


def console_for(json_mode: bool) -> Console:
    """Human output: stdout normally, stderr when stdout is reserved for JSON."""
    # soft_wrap: long lines (paths) are not broken at 80 columns when output is not a terminal.
    return Console(stderr=json_mode, highlight=False, soft_wrap=True)


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a StepError into one red line on stderr and its exit code (2) instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except StepError as e:
            # escape: messages quote logs and paths, whose brackets are not rich markup
            Console(stderr=True, highlight=False).print(
                f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True
            )
            raise typer.Exit(e.exit_code) from None

    return wrapper


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(str(c) for c in row))
    return t
