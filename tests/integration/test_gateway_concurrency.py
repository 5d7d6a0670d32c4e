"""Exactly once under concurrency: 500 concurrent paid calls against 2 workers of the
server we ship (granian) on 100 credits -> exactly 100 served and 400 x 402, on SQLite
and on PostgreSQL, and the usage table agrees; and workers killed while holding leased
calls give them back, under granian and under gunicorn (MODELMARKET_HTTP_SERVER's other
choice)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from sqlalchemy import func, select

from inference import codecs
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Credit, CreditLease, Usage
from marketplace.devstack.anvil import dev_key
from tests.support.replicas import serve
from tests.support.world import PRICE

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def test_500_calls_on_100_credits(world, database, tmp_path):
    server, key, buyer, log = serve(world, database, tmp_path, 100)
    sessions = session_factory(make_engine(database))
    url = server.url
    try:
        body, headers = codecs.encode_request(
            {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
        )
        headers = {**headers, "Authorization": f"Bearer {key}"}

        def call(_i: int) -> int:
            return requests.post(
                f"{url}/v2/models/{world.model_id}/infer", data=body, headers=headers, timeout=60
            ).status_code

        with ThreadPoolExecutor(max_workers=32) as pool:
            codes = list(pool.map(call, range(500)))
    finally:
        server.stop()
    counts = {c: codes.count(c) for c in set(codes)}
    assert counts == {200: 100, 402: 400}, log.read_text()[-3000:]
    with sessions() as s:
        assert s.scalar(select(Credit.remaining).where(Credit.buyer == buyer.lower())) == 0
        # the workers gave back every lease when they stopped
        open_leases = select(func.count()).where(CreditLease.settled_at.is_(None))
        assert s.scalar(open_leases) == 0
        served = s.scalar(
            select(func.count())
            .select_from(Usage)
            .where(Usage.status == "ok", Usage.refunded.is_(False))
        )
        assert served == 100
        assert s.scalar(select(func.count()).select_from(Usage)) == 100


@pytest.mark.parametrize("server_kind", ["granian", "gunicorn"])
def test_a_killed_worker_gives_its_unspent_calls_back_after_the_ttl(
    world, database, tmp_path, server_kind
):
    """SIGKILL both workers while they hold leases: their unspent calls come back to the
    buyer once the lease TTL passes (swept by the workers the server starts instead), and
    the calls they served stay paid."""
    ttl = 2.0
    server, key, buyer, log = serve(
        world,
        database,
        tmp_path,
        100,
        server=server_kind,
        MODELMARKET_CREDIT_LEASE_TTL=str(ttl),
    )
    auth_header = {"Authorization": f"Bearer {key}"}
    sessions = session_factory(make_engine(database))
    open_leases = select(func.count()).where(CreditLease.settled_at.is_(None))
    try:
        body, headers = codecs.encode_request(
            {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
        )
        url = f"{server.url}/v2/models/{world.model_id}/infer"
        for _ in range(20):
            r = requests.post(url, data=body, headers={**headers, **auth_header}, timeout=30)
            assert r.status_code == 200, log.read_text()[-3000:]
        time.sleep(0.5)  # the served calls are written (every 0.1 s)
        with sessions() as s:
            assert s.scalar(open_leases) >= 1  # calls sit in leases of the running workers
        killed = server.worker_pids()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not set(server.worker_pids()) - set(killed) or any(
            p in killed for p in server.worker_pids()
        ):
            assert time.monotonic() < deadline, "the server did not replace its workers"
            time.sleep(0.1)
        server.wait_serving(4)  # the 2 new workers have built the app
        left = None
        deadline = time.monotonic() + 10 * ttl
        while left != 80:
            assert time.monotonic() < deadline, f"calls not given back: {left} left"
            time.sleep(0.2)
            r = requests.get(f"{server.url}/api/v1/credits", headers=auth_header, timeout=30)
            assert r.status_code == 200, r.text
            left = r.json()[0]["remaining"]
            assert left <= 80, "a call served before the crash was given back"
    finally:
        server.stop()
    with sessions() as s:
        assert s.scalar(select(Credit.remaining).where(Credit.buyer == buyer.lower())) == 80
        assert s.scalar(open_leases) == 0
        served = select(func.count()).select_from(Usage).where(Usage.status == "ok")
        assert s.scalar(served) == 20


def test_one_x402_payment_sent_20_times_at_once_pays_once(world, database, tmp_path):
    """The same signed payment, 20 times at once over two workers: the nonce is
    reserved in the shared database, so one call is served and paid; the rest are
    refused (409) and nothing else moves."""
    from tests.support.world import SETTLER
    from tests.support.x402_client import payment_response, sdk_payment

    settler = {"MODELMARKET_SETTLER_KEY": dev_key(SETTLER)}
    server, _, _, log = serve(world, database, tmp_path, 0, **settler)
    url = f"{server.url}/v2/models/{world.model_id}/infer"
    payer, seller = world.signers[3].address, world.signers[1].address
    before = world.market.token_balance(payer), world.market.earnings(seller)
    try:
        body, headers = codecs.encode_request(
            {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
        )
        offered = requests.post(url, data=body, headers=headers, timeout=30)
        assert offered.status_code == 402
        paid = {**headers, "PAYMENT-SIGNATURE": sdk_payment(3, offered)}
        with ThreadPoolExecutor(20) as pool:
            answers = list(
                pool.map(
                    lambda _: requests.post(url, data=body, headers=paid, timeout=60), range(20)
                )
            )
    finally:
        server.stop()
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * 19, log.read_text()[-2000:]
    codes = {a.json()["code"] for a in answers if a.status_code == 409}
    assert codes <= {"payment_in_progress", "payment_already_used"}
    served = next(a for a in answers if a.status_code == 200)
    assert payment_response(served)["success"] is True
    fee = PRICE * 250 // 10_000
    after = world.market.token_balance(payer), world.market.earnings(seller)
    assert after == (before[0] - PRICE, before[1] + PRICE - fee)
    with session_factory(make_engine(database))() as s:
        assert s.scalar(select(func.count()).select_from(Usage)) == 1
