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


def test_replicas_starting_together_migrate_one_at_a_time(postgres, tmp_path):
    """Four `modelmarket migrate` at once on an empty PostgreSQL database (replicas and
    indexers starting together): every one succeeds and the schema is whole."""
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    from sqlalchemy import create_engine, text

    name = f"m_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    cli = str(Path(sys.executable).parent / "modelmarket")
    env = {"MODELMARKET_DATABASE_URL": url, "MODELMARKET_DATA_DIR": str(tmp_path)}
    import os

    runs = [
        subprocess.Popen(
            [cli, "migrate"], env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    try:
        assert [run.returncode for run in runs] == [0, 0, 0, 0], errors
        _check(url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
