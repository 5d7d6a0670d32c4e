"""The click group, and the one mapping of every error (domain, storage, inference) to
one line on stderr and an exit code by kind."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
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
EXIT_USAGE = 2  # and a setting that is missing or invalid
EXIT_INVALID = 3  # the input or the request was refused (4xx but payment)
EXIT_PAYMENT = 4  # not signed in, not paid, not allowed
EXIT_UNAVAILABLE = 5  # the chain, the store or the database did not answer
EXIT_REFUTED = 6  # a usage receipt failed verification (`verify`)


def exit_code(status: int, code: str) -> int:
    """The exit code for an error with this HTTP status and stable code."""
    if code == "configuration_error":
        return EXIT_USAGE
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
            message = body["message"]
            if body["error"] == "internal_error":
                message = f"an unexpected {type(exc).__name__}; {_keep_traceback()}"
            click.echo(f"error: {message} [{body['error']}]", err=True)
            sys.exit(exit_code(status, str(body["error"])))

    return wrapper  # type: ignore[return-value]


def _keep_traceback() -> str:
    """Write the traceback being handled to a private file: the terminal gets one line,
    the details are not lost (a library's message may quote a URL or a value, so they go
    to a file only the user can read, never to the screen or a shared log)."""
    fd, path = tempfile.mkstemp(prefix="modelmarket-error-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        traceback.print_exc(file=out)
    return f"the traceback is in {path}"


@click.group()
def main() -> None:
    """ModelMarket: list ONNX models, buy inference calls, serve them."""
