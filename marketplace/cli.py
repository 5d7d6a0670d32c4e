"""The `modelmarket` console script. Domain errors become one line on stderr and exit 1."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console

from marketplace import devstack, errors
from marketplace.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)


def domain_errors(fn: F) -> F:
    """Map the domain exception hierarchy to the CLI, in one place."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.ModelMarketError as exc:
            click.echo(f"error: {exc.message} [{exc.code}]", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group()
def main() -> None:
    """ModelMarket: list ONNX models, buy inference calls, serve them."""


@main.command()
@domain_errors
def run() -> None:
    """Start the embedded default: anvil, contracts deployed, demo accounts funded.

    State lives in the data dir (MODELMARKET_DATA_DIR) and is kept across restarts.
    Ctrl-C stops everything it started.
    """
    settings = Settings()
    stop = threading.Event()
    # SIGTERM too, so `kill <pid>` shuts down as cleanly as Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with devstack.running(settings, progress=lambda m: out.print(f"• {m}", markup=False)) as (
        rpc_url,
        deployment,
        new,
    ):
        out.print("deployed" if new else f"reusing the deployment in {settings.deployment_path}")
        out.print(f"  chain id     {deployment.chain_id}")
        out.print(f"  rpc url      {rpc_url}")
        out.print(f"  marketplace  {deployment.marketplace}")
        out.print(f"  token (MMT)  {deployment.token}")
        out.print(f"  start block  {deployment.start_block}")
        out.print("ready. Ctrl-C to stop.")
        stop.wait()
        out.print("stopping…")
    out.print("stopped.")


if __name__ == "__main__":
    main()
