"""The gateway as production runs it, for the load and fault tests: the world's listing
in a database of the test's choosing, credits and an API key for a buyer, and one or
more replicas under the server we ship (granian) or gunicorn."""

from __future__ import annotations

from pathlib import Path

from marketplace.accounts import keys
from marketplace.bootstrap import make_indexer
from marketplace.config import PROJECT_ROOT
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.migrate import migrate
from marketplace.devstack.serve import Server, start_gunicorn, start_shipped_granian
from marketplace.payments.prepaid import ledger
from marketplace.serving import THREADS
from tests.support.world import PRICE, World


def credit_calls(database: str, buyer: str, model_id: int, calls: int) -> str:
    """`calls` prepaid calls of `model_id` for `buyer` (as if a purchase was redeemed),
    and a new API key of the buyer's."""
    sessions = session_factory(make_engine(database))
    with sessions() as s, s.begin():
        ledger.credit(
            s,
            ledger.PurchaseRecord(
                tx_hash="0x" + "11" * 32,
                log_index=0,
                buyer=buyer,
                model_id=model_id,
                calls=calls,
                amount=calls * PRICE,
                fee=0,
                block_number=1,
                block_hash="0x" + "22" * 32,
                source="receipt",
            ),
        )
        _, key = keys.create_key(s, buyer, "load")
    return key


def replica_env(world: World, database: str, **env: str) -> dict[str, str]:
    """The environment a gateway replica of the world runs with."""
    settings = world.settings
    return {
        "MODELMARKET_DATA_DIR": str(settings.data_dir),
        "MODELMARKET_RPC_URL": str(settings.rpc_url),
        "MODELMARKET_DATABASE_URL": database,
        "MODELMARKET_DEPLOYMENT_FILE": str(settings.deployment_path),
        "MODELMARKET_METRICS_DIR": str(settings.data_dir / "metrics"),  # the test's own
        **env,
    }


def start_replica(
    env: dict[str, str],
    log: Path,
    *,
    port: int = 0,
    workers: int = 2,
    server: str = "granian",
) -> Server:
    """One gateway replica under the server we ship (granian, granian_server.py's
    watchdog and respawns) or gunicorn with the gunicorn.conf.py we ship (its hooks).
    Both give each worker its own SO_REUSEPORT socket, so replicas started on one port
    share it as a load balancer would."""
    if server == "granian":
        replica = start_shipped_granian(env, workers=workers, port=port, log=log)
    else:
        replica = start_gunicorn(
            "app:create_app()",
            env,
            workers=workers,
            threads=THREADS,
            reuse_port=True,
            port=port,
            log=log,
            ready_path="/v2/health/ready",
            config=PROJECT_ROOT / "gunicorn.conf.py",
        )
    replica.wait_serving(workers)  # the port may have been answered by another replica
    return replica


def serve(world, database, tmp_path, calls: int, *, server: str = "granian", **env: str):  # type: ignore[no-untyped-def]
    """The world's listing in `database`, `calls` credits for signer 2 and a key, and
    the gateway under `server` (2 workers): (server, key, buyer, log)."""
    migrate(database)
    make_indexer(world.settings.model_copy(update={"database_url": database})).run_once()
    buyer = world.signers[2].address
    key = credit_calls(database, buyer, world.model_id, calls)
    log = tmp_path / f"{server}.log"
    replica = start_replica(replica_env(world, database, **env), log, server=server)
    return replica, key, buyer, log
