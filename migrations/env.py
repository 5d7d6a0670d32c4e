"""Alembic environment: the models' metadata, the URL from Settings (or -x url=...)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from marketplace.config import Settings
from marketplace.db.engine import make_engine
from marketplace.db.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    given = context.get_x_argument(as_dictionary=True).get("url")
    return given or config.get_main_option("sqlalchemy.url") or Settings().db_url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite needs batch mode to alter tables
    )


def run_migrations_offline() -> None:
    _configure(url=_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
