"""The gateway's collaborators (database, keys, sign-in terms, store, model and session
caches, payment methods), built once from Settings for the web faces. Flask-free."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from datetime import UTC, datetime

from inference.sessions import SessionCache
from marketplace import errors, metrics, serving
from marketplace.accounts.keys import KeyCache
from marketplace.accounts.siwe import SiweTerms, load_secret
from marketplace.bootstrap import load_deployment, make_market, make_store, runtime_settings
from marketplace.catalog.sales import Served, served
from marketplace.chain.anchors import Anchors
from marketplace.chain.artifacts import Deployment
from marketplace.chain.endpoint import rpc_url_for
from marketplace.chain.market import Marketplace
from marketplace.chain.per_call import Settler
from marketplace.chain.transactions import Signer, head_block
from marketplace.config import Settings
from marketplace.db.engine import make_engine, read_session_factory, session_factory
from marketplace.db.tables import Listing
from marketplace.health import PROBE_TIMEOUT, Dependencies, database_check
from marketplace.payments.pipeline import PaymentPipeline
from marketplace.payments.prepaid.method import PrepaidCredits
from marketplace.payments.x402.method import X402Exact
from marketplace.usage.anchoring import Anchorer, ReceiptIssuer
from marketplace.usage.proofs import anchored_calls
from marketplace.usage.receipts import Domain
from storage.cache import ModelCache

log = logging.getLogger("modelmarket.audit")


class Gateway:
    """Everything a web face needs, built once from Settings. The chain is connected
    lazily (the app can start before the chain answers)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.db_url, timeout=settings.db_timeout)
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
            on_event=metrics.cache_event,
        )
        self.onnx_sessions = SessionCache(
            settings.session_cache_bytes, runtime_settings(settings), on_load=metrics.session_loaded
        )
        self.prepaid = PrepaidCredits(
            self.engine,
            keys=self.keys,
            deployment=lambda: self.deployment,
            lease_size=settings.credit_lease_size,
            ttl=settings.credit_lease_ttl,
        )
        self.x402 = X402Exact(
            self.engine,
            settler=self.settler,
            settle_timeout=settings.x402_settle_timeout,
            reservation_ttl=settings.x402_reservation_ttl,
            max_timeout_seconds=settings.x402_max_timeout_seconds,
        )
        # The payment methods, in the order a 402 offers them: one line each.
        self.payments = PaymentPipeline([self.prepaid, self.x402], receipts=self.receipt_issuer)
        # the gateway's on-chain identity: settles x402 payments, anchors receipt roots
        self.identity = Signer(settings.settler_key) if settings.settler_key else None
        self._issuer: ReceiptIssuer | bool | None = None  # False: receipts are off
        self._anchors: Anchors | None = None
        self.anchorer = Anchorer(
            self.engine,
            self.anchors,
            self.receipt_domain,
            period=settings.anchor_period,
            max_calls=settings.anchor_max_calls,
            stale_after=settings.tx_timeout + 30,
        )
        self._worker = -1  # the process whose exit settles this gateway (start_background)
        self._worker_lock = threading.Lock()
        self._settler: Settler | None = None
        self._market: Marketplace | None = None
        self._served: tuple[float, Served] | None = None
        self._served_lock = threading.Lock()
        self._anchored: tuple[float, dict[int, tuple[int, int]]] | None = None
        self._listings: dict[int, tuple[float, Listing]] = {}
        self._listings_lock = threading.Lock()
        self.dependencies = Dependencies(
            {
                "database": database_check(self.engine),
                "chain": lambda: head_block(rpc_url_for(settings), PROBE_TIMEOUT),
                "store": self.store.ping,
            }
        )

    def start_background(self) -> None:
        """This worker's background threads, started by its requests (a pid check once
        running): the x402 reconciler, so a restarted gateway finishes what a crash or a
        timeout left, and the anchorer, which anchors what was served before."""
        if self._worker != os.getpid():
            with self._worker_lock:
                if self._worker != os.getpid():
                    self._worker = os.getpid()
                    if multiprocessing.parent_process() is not None:
                        # A multiprocessing worker (granian's) leaves through os._exit
                        # once its server stops: no atexit hook runs, multiprocessing's
                        # finalizers do. (gunicorn's workers are its own forks: its
                        # worker_exit hook closes.)
                        multiprocessing.util.Finalize(self, self.close, exitpriority=10)
                        serving.settle_worker_heap()  # gunicorn's post_worker_init does
        if self.settings.settler_key is not None:
            self.x402.start()
        if self.receipts_on:
            self.anchorer.start()

    def close(self) -> None:
        """Settle what this worker holds (it is stopping): its served calls written, its
        leases given back (the prepaid keeper), its x402 reconciler and anchorer stopped,
        its metrics written. Safe to run twice (the keeper's atexit hook does the same at
        exit)."""
        self.prepaid.close()
        self.x402.close()
        self.anchorer.stop()
        metrics.flush()

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

    def served(self, max_age: float = 30.0) -> Served:
        """Calls served per model and per day, read at most every `max_age` seconds: the
        storefront shows them to anyone, and counting reads the whole usage table. One
        reader at a time (the others wait for its answer rather than scan too)."""
        with self._served_lock:
            now = time.monotonic()
            if self._served is None or now - self._served[0] >= max_age:
                with self.reads() as session:
                    self._served = (now, served(session, datetime.now(UTC)))
            return self._served[1]

    def anchored(self, max_age: float = 30.0) -> dict[int, tuple[int, int]]:
        """Per model: (calls whose receipts are anchored on-chain, batches holding them),
        read at most every `max_age` seconds (every listing page shows them)."""
        with self._served_lock:
            now = time.monotonic()
            if self._anchored is None or now - self._anchored[0] >= max_age:
                with self.reads() as session:
                    self._anchored = (now, anchored_calls(session))
            return self._anchored[1]

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

    def settler(self) -> Settler | None:
        """The x402 settling account (None without MODELMARKET_SETTLER_KEY: no x402)."""
        if self._settler is None and self.identity is not None:
            self._settler = Settler(self.market, self.identity)
        return self._settler

    @property
    def receipts_on(self) -> bool:
        """Whether this gateway issues receipts: asked for, with an identity to anchor."""
        return self.settings.receipts and self.identity is not None

    def receipt_domain(self) -> Domain:
        """Where this gateway's receipts are verified (its deployment's UsageAnchors)."""
        anchors = self.deployment.anchors
        if anchors is None:
            raise errors.ConfigurationError("the deployment record names no UsageAnchors")
        return Domain(self.deployment.chain_id, anchors.lower())

    def receipt_issuer(self) -> ReceiptIssuer | None:
        """The receipt issuer, or None when receipts are off (decided once)."""
        if self._issuer is None:
            if not self.receipts_on or self.deployment.anchors is None:
                if self.receipts_on:
                    log.warning("receipts are off: the deployment record names no UsageAnchors")
                self._issuer = False
            else:
                assert self.identity is not None
                self._issuer = ReceiptIssuer(
                    self.engine, self.identity.address, self.receipt_domain()
                )
        return self._issuer if isinstance(self._issuer, ReceiptIssuer) else None

    def anchors(self) -> Anchors | None:
        """The UsageAnchors binding with the gateway's key (None when receipts are off)."""
        if self._anchors is None and self.receipt_issuer() is not None:
            self._anchors = Anchors(
                self.market.w3,
                self.receipt_domain().anchors,
                self.settings.artifacts_dir,
                signer=self.identity,
                timeout=self.settings.tx_timeout,
            )
        return self._anchors

    @property
    def market(self) -> Marketplace:
        """The marketplace binding of the deployment record (connects on first use)."""
        if self._market is None:
            self._market = make_market(self.settings, deployment=self.deployment)
        return self._market
