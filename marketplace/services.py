"""Wiring: build the domain's collaborators (database, chain, store, indexer) from
Settings, once, for the CLI and the app factory."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from marketplace import chain, db, devstack
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.indexer import Indexer
from storage.store import open_store


def migrate(settings: Settings) -> None:
    """Bring the database to the newest schema (Alembic upgrade head)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", settings.db_url)
    command.upgrade(cfg, "head")


def make_indexer(settings: Settings, rpc_url: str | None = None) -> Indexer:
    """An Indexer for the deployment in use, writing to the configured database."""
    w3 = chain.connect(rpc_url or devstack.rpc_url_for(settings), timeout=settings.rpc_timeout)
    deployment = chain.Deployment.load(settings.deployment_path)
    engine = db.make_engine(settings.db_url)
    return Indexer(
        db.session_factory(engine),
        w3,
        deployment,
        settings.artifacts_dir,
        confirmations=settings.confirmations,
        batch_blocks=settings.indexer_batch_blocks,
        reorg_depth=settings.reorg_depth,
        store=open_store(settings.store_dir, settings.ipfs_api, timeout=settings.storage_timeout),
        max_card_bytes=settings.max_card_bytes,
        card_timeout=settings.storage_timeout,
    )
