"""What commands print: a human view on the terminal, or `--json` for scripts (one JSON
document on stdout, nothing else)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

from marketplace.cli.group import out

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def emit(result: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print `result` as JSON, or call `human` to show it."""
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        human()


def line(text: str) -> None:
    """One line of human output (no markup interpretation: text may come from the chain)."""
    out.print(text, markup=False, highlight=False)


def show_fields(result: dict[str, Any]) -> None:
    """A record as aligned `name  value` lines."""
    width = max(len(k) for k in result) + 2
    for key, value in result.items():
        line(f"{key:<{width}}{value}")
