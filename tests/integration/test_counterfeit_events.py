"""Counterfeit events: a contract that emits logs shaped exactly like the marketplace's
(same topic0, indexed fields and data) inside a transaction that really calls the
marketplace. Neither the receipt path nor the indexer may read them, on SQLite and on
PostgreSQL (it once credited 1,000,000 free calls on both)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from marketplace.chain.artifacts import load_artifact
from marketplace.chain.transactions import Signer, deploy, send
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Credit, Listing, Purchase
from tests.support.paths import ARTIFACTS
from tests.support.world import PRICE, World, buy, infer, sign_in

FORGED_CALLS = 1_000_000


def forge(world: World, attacker: Signer) -> tuple[str, int]:
    """Deploy the forger and run its attack once; returns (tx hash, forged model id)."""
    forger, _ = deploy(
        world.market.w3, load_artifact(ARTIFACTS, "EventForger"), attacker, ARTIFACTS
    )
    contract = world.market.w3.eth.contract(
        address=forger, abi=load_artifact(ARTIFACTS, "EventForger").abi
    )
    receipt = send(
        world.market.w3,
        contract.functions.forge(
            world.market.contract.address,
            world.market.deployment.token,
            world.model_id,
            attacker.address,
            FORGED_CALLS,
            PRICE,
        ),
        attacker,
        ARTIFACTS,
    )
    # the forged logs really are in the receipt, beside the marketplace's own
    emitters = {log["address"] for log in receipt["logs"]}
    assert emitters == {forger, world.market.contract.address}
    assert len(receipt["logs"]) == 4
    world.mine(1)
    return receipt["transactionHash"].to_0x_hex(), world.model_id + 1000


@pytest.mark.parametrize("which", ["world", "pg_world"])
def test_forged_events_credit_nothing_anywhere(request, which):
    world: World = request.getfixturevalue(which)
    attacker = world.signers[3]
    key = sign_in(world, 3)
    tx, fake_model = forge(world, attacker)

    # the receipt path: the transaction holds no purchase the marketplace emitted
    r = world.client.post(
        "/api/v1/receipts", json={"tx_hash": tx}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 400 and r.get_json()["error"] == "receipt_not_purchase", r.get_json()

    # the indexer: no purchase, no credit, no forged listing; the real listModel counts
    world.index()
    sessions = session_factory(make_engine(world.settings.db_url))
    with sessions() as s:
        assert s.execute(select(Purchase)).scalars().all() == []
        assert s.execute(select(Credit)).scalars().all() == []
        assert s.get(Listing, fake_model) is None
        real = s.execute(select(Listing).where(Listing.model_cid == "bafkforged")).scalar_one()
        assert real.seller != attacker.address.lower()  # the forger contract listed it
    assert (
        world.client.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"}).get_json()
        == []
    )

    # and no free call: the attacker gets a 402
    assert infer(world, key).status_code == 402

    # a real purchase next to it still credits exactly what was paid
    mine = buy(world, 3, 2)
    r = world.client.post(
        "/api/v1/receipts", json={"tx_hash": mine}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 201 and r.get_json()["credited"][0]["calls"] == 2
