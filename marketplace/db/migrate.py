"""The schema: brought to Alembic's newest revision, for the CLI, the app's first start
and the tests alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from marketplace.config import PROJECT_ROOT


def migrate(db_url: str) -> None:
    """Bring the database at `db_url` to the newest schema (Alembic upgrade head); a
    SQLite file's folder is made first."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", db_url)
    command.upgrade(cfg, "head")
