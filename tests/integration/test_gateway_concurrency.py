"""Exactly once under concurrency: 500 concurrent paid calls against 2 gunicorn workers
on 100 credits -> exactly 100 served and 400 x 402, on SQLite and on PostgreSQL, and the
usage table agrees."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from sqlalchemy import func, select

from inference import codecs
from marketplace import auth, db, devstack, ledger, services
from marketplace.models import Credit, CreditLease, Usage
from tests.integration.test_gateway import PRICE

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def test_500_calls_on_100_credits(world, database, tmp_path):
    settings = world.settings.model_copy(update={"database_url": database})
    services.migrate(settings)
    services.make_indexer(settings).run_once()  # the listing, into this database
    buyer = world.signers[2].address
    sessions = db.session_factory(db.make_engine(database))
    with sessions() as s, s.begin():
        ledger.credit(
            s,
            tx_hash="0x" + "11" * 32,
            log_index=0,
            buyer=buyer,
            model_id=world.model_id,
            calls=100,
            amount=100 * PRICE,
            fee=0,
            block_number=1,
            block_hash="0x" + "22" * 32,
            source="receipt",
        )
        _, key = auth.create_key(s, buyer, "load")

    env = {
        "MODELMARKET_DATA_DIR": str(settings.data_dir),
        "MODELMARKET_RPC_URL": str(settings.rpc_url),
        "MODELMARKET_DATABASE_URL": database,
        "MODELMARKET_DEPLOYMENT_FILE": str(settings.deployment_path),
    }
    log = tmp_path / "gunicorn.log"
    server = devstack.start_gunicorn(
        "app:create_app()", env, workers=2, threads=4, log=log, ready_path="/v2/health/ready"
    )
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
