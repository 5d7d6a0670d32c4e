"""Scale-out: two gateway replicas (2 workers each, under the server we ship, calls
spread over them in turn as a load balancer would) on one PostgreSQL. 2,000 paid calls
sent at once on 100 prepaid credits, with x402 payments mixed in: exactly 100 prepaid
calls served and the rest 402, each x402 payment served once, and the usage table,
the credit and the chain's balances agree."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import numpy as np
import pytest
import requests
from sqlalchemy import func, select

from inference import codecs
from marketplace.bootstrap import make_indexer
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.migrate import migrate
from marketplace.db.tables import Credit, CreditLease, Usage
from marketplace.devstack.anvil import dev_key
from tests.support.replicas import credit_calls, replica_env, start_replica
from tests.support.world import PRICE, SETTLER, World
from tests.support.x402_client import sdk_payment

pytestmark = pytest.mark.slow

PREPAID_CALLS, CREDITS, X402_PAYMENTS = 2_000, 100, 20


async def send_all(urls: list[str], requests_: list[dict[str, str]], body: bytes) -> list[int]:
    """Every request on its own connection, all at once, spread over `urls` in turn (as
    a round-robin load balancer would)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(url: str, headers: dict[str, str]) -> int:
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one(urls[i % len(urls)], h) for i, h in enumerate(requests_)))


def test_two_replicas_2000_calls_at_once_on_100_credits_with_x402_mixed_in(
    world: World, pg_url: str, tmp_path
) -> None:
    migrate(pg_url)
    make_indexer(world.settings.model_copy(update={"database_url": pg_url})).run_once()
    buyer, payer, seller = (world.signers[i].address for i in (2, 3, 1))
    key = credit_calls(pg_url, buyer, world.model_id, CREDITS)
    env = replica_env(world, pg_url, MODELMARKET_SETTLER_KEY=dev_key(SETTLER))
    first = start_replica(env, tmp_path / "replica-1.log", workers=2)
    second = start_replica(env, tmp_path / "replica-2.log", workers=2)
    urls = [f"{r.url}/v2/models/{world.model_id}/infer" for r in (first, second)]
    url = urls[0]
    body, headers = codecs.encode_request(
        {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    )
    before = world.market.token_balance(payer), world.market.earnings(seller)
    try:
        offered = requests.post(url, data=body, headers=headers, timeout=30)
        assert offered.status_code == 402
        payments = [sdk_payment(3, offered) for _ in range(X402_PAYMENTS)]
        prepaid = [{**headers, "Authorization": f"Bearer {key}"}] * PREPAID_CALLS
        x402 = [{**headers, "PAYMENT-SIGNATURE": p} for p in payments * 2]  # each sent twice
        mixed = prepaid + x402
        random.Random(7).shuffle(mixed)
        started = time.monotonic()
        # on a thread of its own: an earlier test's event loop (Playwright's) may still
        # be set on this one
        with ThreadPoolExecutor(1) as thread:
            statuses = thread.submit(asyncio.run, send_all(urls, mixed, body)).result()
        elapsed = time.monotonic() - started
    finally:
        first.stop()
        second.stop()
    logs = (tmp_path / "replica-1.log").read_text()[-2000:]
    by_kind = Counter(
        ("x402" if "PAYMENT-SIGNATURE" in h else "prepaid", s)
        for h, s in zip(mixed, statuses, strict=True)
    )
    assert by_kind[("prepaid", 200)] == CREDITS, (by_kind, logs)
    assert by_kind[("prepaid", 402)] == PREPAID_CALLS - CREDITS, by_kind
    assert by_kind[("x402", 200)] == X402_PAYMENTS, by_kind
    assert by_kind[("x402", 409)] == X402_PAYMENTS, by_kind  # the second sending of each
    with session_factory(make_engine(pg_url))() as s:
        assert s.scalar(select(Credit.remaining).where(Credit.buyer == buyer.lower())) == 0
        assert s.scalar(select(func.count()).where(CreditLease.settled_at.is_(None))) == 0
        served = select(Usage.buyer, func.count()).where(
            Usage.status == "ok", Usage.refunded.is_(False)
        )
        rows = dict(s.execute(served.group_by(Usage.buyer)).all())
    assert rows == {buyer.lower(): CREDITS, payer.lower(): X402_PAYMENTS}
    fee = PRICE * 250 // 10_000
    after = world.market.token_balance(payer), world.market.earnings(seller)
    assert after == (
        before[0] - X402_PAYMENTS * PRICE,
        before[1] + X402_PAYMENTS * (PRICE - fee),
    )
    print(f"\n{len(mixed)} calls at once over 2 replicas x 2 workers: {elapsed:.1f} s, {by_kind}")
