"""The schema: brought to Alembic's newest revision, for the CLI, the app's first start
and the tests alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from marketplace.config import PROJECT_ROOT

MIGRATION_LOCK = 0x6D6D_6D69  # "mmmi": the session advisory lock migrations take


def migrate(db_url: str) -> None:
    """Bring the database at `db_url` to the newest schema (Alembic upgrade head); a
    SQLite file's folder is made first."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", db_url)
    if url.get_backend_name() != "postgresql":
        command.upgrade(cfg, "head")
        return
    # Alembic takes no lock: replicas and indexers starting together would race on the
    # same CREATE TABLEs. One upgrades at a time; the others then find nothing to do.
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            try:
                command.upgrade(cfg, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
    finally:
        engine.dispose()
