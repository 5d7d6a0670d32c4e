"""The click group, and the one mapping of every error (domain, storage, inference) to
one line on stderr and an exit code by kind."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console

from marketplace import errors

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)

# Exit codes by kind of failure (click itself exits 2 on a usage error).
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INVALID = 3  # the input or the request was refused (4xx but payment)
EXIT_PAYMENT = 4  # not signed in, not paid, not allowed
EXIT_UNAVAILABLE = 5  # the chain, the store or the database did not answer


def exit_code(status: int) -> int:
    """The exit code for an error that HTTP would answer with `status`."""
    if status in (401, 402, 403):
        return EXIT_PAYMENT
    if 400 <= status < 500:
        return EXIT_INVALID
    if status in (502, 503, 504, 507):
        return EXIT_UNAVAILABLE
    return EXIT_INTERNAL


def domain_errors(fn: F) -> F:
    """Every error a command meets becomes one line on stderr and its exit code; an
    unexpected one says so without a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            status, body = errors.describe(exc)
            click.echo(f"error: {body['message']} [{body['error']}]", err=True)
            sys.exit(exit_code(status))

    return wrapper  # type: ignore[return-value]


@click.group()
def main() -> None:
    """ModelMarket: list ONNX models, buy inference calls, serve them."""
