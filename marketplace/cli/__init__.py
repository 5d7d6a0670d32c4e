"""The `modelmarket` console script: the group (`group.py`) and each audience's
commands in their own module, registered on it by import.

Each command imports the heavy parts it uses (web3, onnx, sqlalchemy, alembic, siwe) in
its own body: at module level they cost every command, `--help` included, 3-4 s."""

from __future__ import annotations

from marketplace.cli import audit, buyer, operator, seller
from marketplace.cli.group import main

__all__ = ["audit", "buyer", "main", "operator", "seller"]
