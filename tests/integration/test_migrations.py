"""Alembic migrations build the models' schema on SQLite and PostgreSQL, with no drift."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError

from marketplace.config import PROJECT_ROOT


def _check(url: str) -> None:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    try:
        command.check(cfg)
    except CommandError as exc:  # "New upgrade operations detected: ..."
        pytest.fail(f"models and migrations differ: {exc}")


def test_no_drift_on_sqlite(sqlite_url):
    _check(sqlite_url)


def test_no_drift_on_postgresql(pg_url):
    _check(pg_url)


def test_downgrade_to_nothing_and_back(sqlite_url):
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", sqlite_url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    _check(sqlite_url)
