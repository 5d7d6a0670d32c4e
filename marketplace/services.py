"""Wiring: build the domain's collaborators (database, chain, store, indexer) from
Settings, once, for the CLI and the app factory."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from alembic import command
from alembic.config import Config

from inference.sessions import RuntimeSettings, SessionCache
from marketplace import auth, chain, db, devstack
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.indexer import Indexer, ModelChecks
from marketplace.models import Listing
from storage.cache import ModelCache
from storage.store import open_store


def migrate(settings: Settings) -> None:
    """Bring the database to the newest schema (Alembic upgrade head)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", settings.db_url)
    command.upgrade(cfg, "head")


def runtime_settings(settings: Settings) -> RuntimeSettings:
    """How onnxruntime sessions load and run, in the gateway and in the load probe."""
    return RuntimeSettings(
        intra_op_threads=settings.inference_threads,
        time_limit_s=settings.inference_time_limit,
        max_input_elements=settings.max_input_elements,
        arena_max_bytes=settings.inference_memory_bytes,
    )


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
        model_checks=ModelChecks(
            max_bytes=settings.max_model_bytes,
            fetch_timeout=settings.storage_timeout,
            load_memory_bytes=settings.model_load_memory_bytes,
            load_timeout=settings.model_load_timeout,
            runtime=runtime_settings(settings),
        ),
    )


class Gateway:
    """Everything a web face needs, built once from Settings. The chain is connected
    lazily (the app can start before the chain answers)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = db.make_engine(settings.db_url)
        self.sessions = db.session_factory(self.engine)
        self.reads = db.read_session_factory(self.engine)
        self.keys = auth.KeyCache(self.reads, settings.key_cache_ttl)
        self.secret = auth.load_secret(settings.secret_path, settings.secret_key)
        self.store = open_store(
            settings.store_dir, settings.ipfs_api, timeout=settings.storage_timeout
        )
        self.cache = ModelCache(
            settings.cache_dir,
            self.store,
            settings.cache_max_bytes,
            timeout=settings.storage_timeout,
        )
        self.models = SessionCache(settings.session_cache_bytes, runtime_settings(settings))
        self._market: chain.Marketplace | None = None
        self.payments: Any = None  # the app factory plugs in the payment method
        self._listings: dict[int, tuple[float, Listing]] = {}
        self._listings_lock = threading.Lock()

    def listing(self, model_id: int, max_age: float = 5.0) -> Listing | None:
        """A listing, from an in-process cache at most `max_age` seconds old. What a paid
        call needs of it (the model CID) never changes; price and active state may lag a
        few seconds, which only the 402 body shows."""
        now = time.monotonic()
        with self._listings_lock:
            hit = self._listings.get(model_id)
        if hit is not None and now - hit[0] < max_age:
            return hit[1]
        with self.reads() as session:
            listing = session.get(Listing, model_id)
        if listing is not None:
            with self._listings_lock:
                self._listings[model_id] = (now, listing)
        return listing

    @functools.cached_property
    def deployment(self) -> chain.Deployment:
        """The deployment record (read from its file; no chain round trip)."""
        return chain.Deployment.load(self.settings.deployment_path)

    @functools.cached_property
    def siwe_terms(self) -> auth.SiweTerms:
        """What a sign-in message must name: the configured public URL and our chain."""
        return auth.SiweTerms.of(self.settings.public, self.deployment.chain_id)

    @property
    def market(self) -> chain.Marketplace:
        """The marketplace binding (connects on first use)."""
        if self._market is None:
            w3 = chain.connect(
                devstack.rpc_url_for(self.settings), timeout=self.settings.rpc_timeout
            )
            deployment = chain.Deployment.load(self.settings.deployment_path)
            self._market = chain.Marketplace(
                w3, deployment, self.settings.artifacts_dir, timeout=self.settings.tx_timeout
            )
        return self._market
