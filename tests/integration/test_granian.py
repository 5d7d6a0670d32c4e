"""granian (WSGI), the faster server bench.gateway measures and not yet the one we ship:
its workers are multiprocessing children that leave through os._exit, so no atexit hook
runs in them. A worker stopped gracefully must still write the calls it served and give
its leased calls back (`Gateway.close`, run by multiprocessing's finalizers there)."""

from __future__ import annotations

import numpy as np
import requests
from sqlalchemy import func, select

from inference import codecs
from marketplace.bootstrap import make_indexer
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.migrate import migrate
from marketplace.db.tables import Usage
from marketplace.devstack.serve import start_granian
from marketplace.payments.prepaid import ledger
from tests.support.replicas import credit_calls, replica_env
from tests.support.world import World


def test_a_granian_worker_stopped_gracefully_writes_its_calls_and_gives_its_leases_back(
    world: World, tmp_path
):
    database = f"sqlite:///{tmp_path / 'gateway.db'}"
    migrate(database)
    make_indexer(world.settings.model_copy(update={"database_url": database})).run_once()
    buyer = world.signers[2].address
    key = credit_calls(database, buyer, world.model_id, 100)
    server = start_granian(
        "app:create_app",
        replica_env(world, database),
        workers=2,
        threads=4,
        log=tmp_path / "granian.log",
        ready_path="/v2/health/ready",
    )
    try:
        body, headers = codecs.encode_request(
            {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
        )
        url = f"{server.url}/v2/models/{world.model_id}/infer"
        with requests.Session() as http:
            for _ in range(12):
                r = http.post(url, data=body, headers={**headers, "Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
    finally:
        server.stop()
    sessions = session_factory(make_engine(database))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Usage)) == 12  # every call written
        assert ledger.remaining(s, buyer, world.model_id) == 88  # the rest given back
