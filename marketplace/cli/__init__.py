"""The `modelmarket` console script: the group (`group.py`) and each audience's
commands in their own module, registered on it by import."""

from __future__ import annotations

from marketplace.cli import buyer, operator, seller
from marketplace.cli.group import main

__all__ = ["buyer", "main", "operator", "seller"]
