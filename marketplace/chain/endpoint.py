"""Which JSON-RPC endpoint to talk to: the configured one, or the embedded chain that
`modelmarket run` recorded in the data dir."""

from __future__ import annotations

import json
from pathlib import Path

from marketplace import errors
from marketplace.config import Settings


def runtime_path(settings: Settings) -> Path:
    """Where a running embedded default records its chain's RPC URL."""
    return settings.data_dir / "chain.json"


def rpc_url_for(settings: Settings) -> str:
    """MODELMARKET_RPC_URL, else the embedded chain that `modelmarket run` started."""
    if settings.rpc_url:
        return settings.rpc_url
    try:
        return str(json.loads(runtime_path(settings).read_text())["rpc_url"])
    except (FileNotFoundError, KeyError, ValueError):
        raise errors.ConfigurationError(
            "no chain to talk to: set MODELMARKET_RPC_URL, or start `make run` first"
        ) from None
