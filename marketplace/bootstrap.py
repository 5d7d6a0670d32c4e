"""Wiring: the domain's collaborators (database, chain, store, caches, payment methods,
the indexer) built from Settings, once, for the CLI and the app factory. Nothing here
decides anything; each piece's rules live in its own package."""

from __future__ import annotations

import functools
import threading
import time

from inference.limits import Limits
from inference.runtime import RuntimeSettings
from inference.sessions import SessionCache
from marketplace import errors
from marketplace.accounts.keys import KeyCache
from marketplace.accounts.siwe import SiweTerms, load_secret
from marketplace.chain.artifacts import Deployment
from marketplace.chain.endpoint import rpc_url_for
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import connect
from marketplace.config import Settings
from marketplace.db.engine import make_engine, read_session_factory, session_factory
from marketplace.db.tables import Listing
from marketplace.indexer.content import ContentChecks
from marketplace.indexer.follow import Indexer
from marketplace.indexer.model_checks import ModelChecks
from marketplace.payments.pipeline import PaymentPipeline
from marketplace.payments.prepaid.method import PrepaidCredits
from storage.backends import open_store
from storage.cache import ModelCache
from storage.store import ContentStore


def runtime_settings(settings: Settings) -> RuntimeSettings:
    """How onnxruntime sessions load and run, in the gateway and in the load probe."""
    return RuntimeSettings(
        intra_op_threads=settings.inference_threads,
        time_limit_s=settings.inference_time_limit,
        arena_max_bytes=settings.inference_memory_bytes,
    )


def load_deployment(settings: Settings) -> Deployment:
    """The deployment record: chain id and contract addresses (no chain round trip)."""
    return Deployment.load(settings.deployment_path)


def make_store(settings: Settings) -> ContentStore:
    """The content store in use: an IPFS node when one is configured, else the embedded."""
    return open_store(settings.store_dir, settings.ipfs_api, timeout=settings.storage_timeout)


def make_market(
    settings: Settings, rpc_url: str | None = None, deployment: Deployment | None = None
) -> Marketplace:
    """The marketplace binding of the deployment in use (connects now)."""
    w3 = connect(rpc_url or rpc_url_for(settings), timeout=settings.rpc_timeout)
    return Marketplace(
        w3,
        deployment or load_deployment(settings),
        settings.artifacts_dir,
        timeout=settings.tx_timeout,
    )


def model_checks(settings: Settings) -> ModelChecks:
    """How far a model may go before it is listed: the indexer's bounds, which `upload`
    applies too."""
    return ModelChecks(
        max_bytes=settings.max_model_bytes,
        fetch_timeout=settings.storage_timeout,
        load_memory_bytes=settings.model_load_memory_bytes,
        load_timeout=settings.model_load_timeout,
        limits=Limits(max_file_bytes=settings.max_model_bytes),
        runtime=runtime_settings(settings),
    )


def make_indexer(settings: Settings, rpc_url: str | None = None) -> Indexer:
    """An Indexer for the deployment in use, writing to the configured database."""
    w3 = connect(rpc_url or rpc_url_for(settings), timeout=settings.rpc_timeout)
    engine = make_engine(settings.db_url)
    store = make_store(settings)
    return Indexer(
        session_factory(engine),
        w3,
        load_deployment(settings),
        settings.artifacts_dir,
        confirmations=settings.confirmations,
        batch_blocks=settings.indexer_batch_blocks,
        reorg_depth=settings.reorg_depth,
        content=ContentChecks(
            store,
            max_card_bytes=settings.max_card_bytes,
            card_timeout=settings.storage_timeout,
            models=model_checks(settings),
        ),
    )


class Gateway:
    """Everything a web face needs, built once from Settings. The chain is connected
    lazily (the app can start before the chain answers)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.db_url)
        self.sessions = session_factory(self.engine)
        self.reads = read_session_factory(self.engine)
        self.keys = KeyCache(self.reads, settings.key_cache_ttl)
        self.secret = load_secret(settings.secret_path, settings.secret_key)
        self.store = make_store(settings)
        self.model_files = ModelCache(
            settings.cache_dir,
            self.store,
            settings.cache_max_bytes,
            timeout=settings.storage_timeout,
        )
        self.onnx_sessions = SessionCache(settings.session_cache_bytes, runtime_settings(settings))
        self.prepaid = PrepaidCredits(
            self.engine,
            keys=self.keys,
            deployment=lambda: self.deployment,
            lease_size=settings.credit_lease_size,
            ttl=settings.credit_lease_ttl,
        )
        # The payment methods, in the order a 402 offers them: one line each.
        self.payments = PaymentPipeline([self.prepaid])
        self._market: Marketplace | None = None
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
    def deployment(self) -> Deployment:
        """The deployment record, loaded once (its file does not change under a running
        gateway). Its error names no server path."""
        try:
            return load_deployment(self.settings)
        except errors.ConfigurationError:
            raise errors.ConfigurationError(
                "the gateway has no deployment record: its operator must deploy first"
            ) from None

    @functools.cached_property
    def siwe_terms(self) -> SiweTerms:
        """What a sign-in message must name: the configured public URL and our chain."""
        return SiweTerms.of(self.settings.public, self.deployment.chain_id)

    @property
    def market(self) -> Marketplace:
        """The marketplace binding of the deployment record (connects on first use)."""
        if self._market is None:
            self._market = make_market(self.settings, deployment=self.deployment)
        return self._market
