"""Operator commands: run the embedded default, follow the chain."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from marketplace.cli.group import domain_errors, main, out
from marketplace.cli.output import emit, json_option, line, show_fields
from marketplace.cli.wallet import signer
from marketplace.config import PROJECT_ROOT, Settings, load_settings

if TYPE_CHECKING:
    from web3.types import TxReceipt

    from marketplace.chain.artifacts import Deployment
    from marketplace.indexer.follow import Indexer
    from marketplace.usage.anchoring import BatchBuilder


@main.command()
@domain_errors
def run() -> None:
    """Start the embedded default: anvil, contracts deployed, demo accounts funded, the
    indexer following the chain and the gateway (both API families) under granian.

    State lives in the data dir (MODELMARKET_DATA_DIR) and is kept across restarts.
    Ctrl-C stops everything it started.
    """
    from marketplace.db.migrate import migrate

    settings = load_settings()
    if not settings.rpc_url and "confirmations" not in settings.model_fields_set:
        # The embedded anvil is one node that mines on each transaction and never
        # reorgs: waiting for N more blocks would wait forever on a quiet dev chain.
        settings = settings.model_copy(update={"confirmations": 0})
    stop = threading.Event()
    # SIGTERM too, so `kill <pid>` shuts down as cleanly as Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # The embedded default is the one thing that starts devstack; production runs the
    # gateway and the indexer as their own processes against a real chain.
    from marketplace.bootstrap import make_batch_builder, make_indexer
    from marketplace.devstack.deploy import running
    from marketplace.devstack.serve import start_gateway

    with running(settings, progress=lambda m: out.print(f"• {m}", markup=False)) as (
        rpc_url,
        deployment,
        new,
    ):
        out.print("deployed" if new else f"reusing the deployment in {settings.deployment_path}")
        out.print(f"  chain id     {deployment.chain_id}")
        out.print(f"  rpc url      {rpc_url}")
        out.print(f"  marketplace  {deployment.marketplace}")
        out.print(f"  token (MMT)  {deployment.token}")
        out.print(f"  start block  {deployment.start_block}")
        migrate(settings.db_url)
        idx = make_indexer(settings, rpc_url)
        builder = make_batch_builder(settings)  # receipt batches: built by this indexer
        worker = threading.Thread(
            target=_follow, args=(idx, stop, [builder.run_once]), name="indexer", daemon=True
        )
        worker.start()
        out.print(f"  database     {settings.db_url}")
        confirmations = f"{settings.confirmations} confirmations"
        out.print(f"  indexer      following the chain in-process ({confirmations})")
        env = {
            "MODELMARKET_DATA_DIR": str(settings.data_dir.resolve()),
            "MODELMARKET_CONFIRMATIONS": str(settings.confirmations),
        }
        if not settings.rpc_url and settings.settler_key is None:
            from marketplace.devstack.anvil import SETTLER_ACCOUNT, dev_key

            # the embedded chain's settler: a public dev key holding only play gas
            env["MODELMARKET_SETTLER_KEY"] = dev_key(SETTLER_ACCOUNT)
        gateway = start_gateway(settings, env, log=settings.data_dir / "gateway.log")
        try:
            out.print(f"  gateway      {gateway.url}/api/v1 and {gateway.url}/v2")
            out.print(f"  openapi      {gateway.url}/api/v1/openapi.json")
            out.print(f"  storefront   {gateway.url}/")
            if not settings.rpc_url:  # the embedded chain: its dev accounts run the demo
                _open_demo_market(settings, rpc_url, deployment)
            out.print("ready. Ctrl-C to stop.")
            stop.wait()
        finally:
            gateway.stop()  # its workers give their leased calls back on the way out
        worker.join(10)
        _stand_down(builder)
        out.print("stopping…")
    out.print("stopped.")


def _stand_down(builder: BatchBuilder) -> None:
    """Give up the builder's batch-building turns (stopping, or no longer leading), so
    the gateways' workers or the next leader build at once, not after the turn lapses."""
    try:
        builder.close()
    except Exception as exc:  # the database is gone: the turn lapses by itself
        out.print(f"• could not give up the batch-building turn ({type(exc).__name__})")


def _open_demo_market(settings: Settings, rpc_url: str, deployment: Deployment) -> None:
    """List the demo models and give the demo buyer calls; print a paid call to try."""
    from marketplace.bootstrap import make_market, make_store, model_checks
    from marketplace.devstack.demo import open_for_business, seed

    market = make_market(settings, rpc_url, deployment)
    shown = lambda m: out.print(f"• {m}", markup=False)  # noqa: E731
    ids = seed(settings, market, make_store(settings), model_checks(settings), progress=shown)
    listing = ", ".join(f"{model_id} {name}" for name, model_id in ids.items())
    out.print(f"  demo models  {listing}", markup=False)
    curl = open_for_business(settings, market, ids, progress=shown)
    out.print(f"  siwe domain  {urlsplit(settings.public).netloc}", markup=False)
    out.print("  a paid call (the demo buyer's key; calls left come back in X-Credits-Remaining):")
    out.print(f"    {curl}", markup=False, soft_wrap=True)
    out.print("  or pay per call with x402 (no key; the 402's PAYMENT-REQUIRED header offers it):")
    out.print("    modelmarket infer 1 --input in.json --x402   (your wallet pays)", markup=False)


def _follow(
    idx: Indexer, stop: threading.Event, jobs: list[Callable[[], object]], interval: float = 1.0
) -> None:
    """The embedded default's indexer loop: progress and errors on the terminal; `jobs`
    (the receipt batch builder) after each pass."""
    from marketplace.indexer.follow import RunResult, follow

    def shown(result: RunResult) -> None:
        if result.events or result.reorged_from is not None:
            out.print(
                f"• indexed to block {result.last_block}: {result.events} events", markup=False
            )

    follow(
        idx,
        stop,
        interval=interval,
        on_result=shown,
        on_error=lambda text: out.print(f"• indexer: {text}", markup=False),
        jobs=jobs,
    )


@main.command()
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Bring the database to the newest schema first.",
)
@domain_errors
def serve(migrate: bool) -> None:
    """The gateway alone (both API families and the storefront) under granian
    (MODELMARKET_HTTP_SERVER=gunicorn: gunicorn with gunicorn.conf.py): what `modelmarket
    run` starts, and what each of N production replicas runs. Address and workers from
    MODELMARKET_HTTP_HOST, _HTTP_PORT and _HTTP_WORKERS; the chain from
    MODELMARKET_RPC_URL and the deployment record. The server replaces this process, so
    signals (SIGTERM: a graceful stop) reach it."""
    import os

    from marketplace import serving

    settings = load_settings()
    if migrate:
        from marketplace.db.migrate import migrate as bring_up

        bring_up(settings.db_url)
    command = serving.command(settings)
    os.chdir(PROJECT_ROOT)  # where app.py lives
    os.execv(command[0], command)  # noqa: S606 (no shell)


@main.command()
@click.option("--once", is_flag=True, help="Catch up once and exit (default: keep following).")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between polls.")
@domain_errors
def indexer(once: bool, interval: float) -> None:
    """Follow the chain into the database: listings, model cards, purchases (credits).

    Shows blocks/s, events/s and blocks left while catching up. Uses the embedded chain
    of a running `modelmarket run`, or MODELMARKET_RPC_URL.
    """
    from rich.progress import BarColumn, TextColumn
    from rich.progress import Progress as Bar

    from marketplace import logs
    from marketplace.bootstrap import make_batch_builder, make_indexer
    from marketplace.db.engine import make_engine
    from marketplace.db.migrate import migrate
    from marketplace.indexer.follow import Progress, RunResult, follow
    from marketplace.indexer.leader import Leadership

    settings = load_settings()
    logs.configure(settings)
    migrate(settings.db_url)
    idx = make_indexer(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    columns = (TextColumn("indexing"), BarColumn(), TextColumn("{task.description}"))
    with Bar(*columns, console=out, transient=False) as bar:
        task = bar.add_task("", total=None)

        def show(p: Progress) -> None:
            bar.update(
                task,
                total=max(p.target_block - p.start_block + 1, 1),
                completed=p.current_block - p.start_block + 1,
                description=(
                    f"block {p.current_block}/{p.target_block}  {p.blocks_left} left"
                    f"  {p.blocks_per_s:,.0f} blocks/s  {p.events_per_s:,.0f} events/s"
                ),
            )

        def done(result: RunResult) -> None:
            if result.reorged_from is not None:
                out.print(f"reorg: rolled back to block {result.reorged_from}")
            out.print(
                f"indexed up to block {result.last_block} ({result.events} new events,"
                f" {result.cards} model cards and {result.models} models settled)"
            )

        if once:
            done(idx.run_once(progress=show))
        else:
            # on PostgreSQL, one indexer works and the others stand by to take over
            leadership = Leadership(make_engine(settings.db_url, timeout=settings.db_timeout))
            builder = make_batch_builder(settings)  # receipt batches: built by the leader

            def role_changed(role: str) -> None:
                out.print(f"indexer {leadership.holder}: {role}")
                if role == "standby":
                    _stand_down(builder)

            follow(
                idx,
                stop,
                interval=interval,
                progress=show,
                on_result=lambda r: done(r) if r.events or r.reorged_from is not None else None,
                on_error=lambda text: out.print(f"indexer: {text}", markup=False),
                leadership=leadership,
                on_role=role_changed,
                jobs=[builder.run_once],
            )
            _stand_down(builder)


@main.command()
@click.option("--fee-bps", type=click.IntRange(0, 10_000), help="Protocol fee (basis points).")
@json_option
@domain_errors
def deploy(fee_bps: int | None, as_json: bool) -> None:
    """Deploy MarketToken and ModelMarketplace with your key to MODELMARKET_RPC_URL, and
    write the deployment record (MODELMARKET_DEPLOYMENT_FILE).

    \b
    Example:
      MODELMARKET_RPC_URL=http://127.0.0.1:8545 MODELMARKET_KEYSTORE=owner.json \\
        modelmarket deploy --fee-bps 250
    """
    from marketplace.chain.endpoint import rpc_url_for
    from marketplace.chain.market import deploy_marketplace
    from marketplace.chain.transactions import connect

    settings = load_settings()
    w3 = connect(rpc_url_for(settings), timeout=settings.rpc_timeout, retries=settings.rpc_retries)
    record = deploy_marketplace(
        w3,
        signer(settings),
        settings.artifacts_dir,
        fee_bps=settings.fee_bps if fee_bps is None else fee_bps,
        timeout=settings.tx_timeout,
    )
    record.save(settings.deployment_path)
    result = {**asdict(record), "saved_to": str(settings.deployment_path)}
    emit(result, as_json, lambda: show_fields(result))


@main.command("migrate")
@json_option
@domain_errors
def migrate_command(as_json: bool) -> None:
    """Bring the database (MODELMARKET_DATABASE_URL) to the newest schema.

    \b
    Example:
      MODELMARKET_DATABASE_URL=postgresql+psycopg://mm@db/mm modelmarket migrate
    """
    from marketplace.db.migrate import migrate

    settings = load_settings()
    migrate(settings.db_url)
    emit({"migrated": True}, as_json, lambda: line("the database is at the newest schema"))


def _owner_call(action: str, as_json: bool, send: Callable[..., TxReceipt]) -> None:
    from marketplace.bootstrap import make_market

    settings = load_settings()
    receipt = send(make_market(settings), signer(settings))
    result = {"done": action, "tx_hash": receipt["transactionHash"].to_0x_hex()}
    emit(result, as_json, lambda: line(f"{action} (tx {result['tx_hash']})"))


@main.command()
@json_option
@domain_errors
def pause(as_json: bool) -> None:
    """Owner: stop listings and purchases (withdrawals still work).

    \b
    Example:
      modelmarket pause
    """
    _owner_call("paused", as_json, lambda m, s: m.pause(s))


@main.command()
@json_option
@domain_errors
def unpause(as_json: bool) -> None:
    """Owner: allow listings and purchases again.

    \b
    Example:
      modelmarket unpause
    """
    _owner_call("unpaused", as_json, lambda m, s: m.unpause(s))


@main.command("set-fee")
@click.argument("fee_bps", type=click.IntRange(0, 10_000))
@json_option
@domain_errors
def set_fee(fee_bps: int, as_json: bool) -> None:
    """Owner: the protocol fee in basis points (the contract caps it).

    \b
    Example:
      modelmarket set-fee 250
    """
    _owner_call(f"fee set to {fee_bps} bps", as_json, lambda m, s: m.set_fee(s, fee_bps))
