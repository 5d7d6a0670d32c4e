"""Wiring: the store, the chain binding, the model checks and the indexer built from
Settings, for the CLI, the demo market and the gateway (web/gateway.py). Nothing here
decides anything; each piece's rules live in its own package. Kept light to import: a
CLI command pays for it before it does anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inference.limits import Limits
from inference.runtime import RuntimeSettings
from marketplace.chain.artifacts import Deployment
from marketplace.chain.endpoint import rpc_url_for
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import connect
from marketplace.config import Settings
from marketplace.db.engine import make_engine, session_factory
from marketplace.indexer.content import ContentChecks
from marketplace.indexer.follow import Indexer
from marketplace.indexer.model_checks import ModelChecks
from storage.backends import open_store
from storage.store import ContentStore

if TYPE_CHECKING:  # imported when first built: the CLI's other commands need none of it
    from marketplace.usage.anchoring import BatchBuilder


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
    w3 = connect(
        rpc_url or rpc_url_for(settings), timeout=settings.rpc_timeout, retries=settings.rpc_retries
    )
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
    w3 = connect(
        rpc_url or rpc_url_for(settings), timeout=settings.rpc_timeout, retries=settings.rpc_retries
    )
    engine = make_engine(settings.db_url, timeout=settings.db_timeout)
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


def make_batch_builder(settings: Settings) -> BatchBuilder:
    """The receipt batch builder the leading indexer runs after each pass."""
    from marketplace.usage.anchoring import BatchBuilder

    return BatchBuilder(
        make_engine(settings.db_url, timeout=settings.db_timeout),
        period=settings.anchor_period,
        max_calls=settings.anchor_max_calls,
    )
