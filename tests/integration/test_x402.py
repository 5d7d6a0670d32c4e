"""Pay per call with x402 (`exact`, EIP-3009) on a real anvil: the official SDK client
pays a call over HTTP; every bad payment is refused before anything moves; a replayed
one pays once; a failed call is never settled; a settlement that times out is charged
once and answered later; a crash between reserving and settling is reconciled; an
authorization someone else submits first still credits the seller, once."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from sqlalchemy import select
from x402.http.clients.requests import x402_requests

from inference import codecs
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Purchase, Usage, X402Payment
from marketplace.devstack.anvil import dev_key
from marketplace.devstack.ports import free_port
from tests.support.launchers import serving
from tests.support.world import PRICE, World
from tests.support.x402_client import (
    exact_offer,
    payment_response,
    required,
    sdk_client,
    sdk_payment,
    signed_payment,
)

pytestmark = pytest.mark.slow

PAYER = 3  # a funded dev account that pays with x402
FEE = PRICE * 250 // 10_000
ORDER = "pay_order_0000000000000001"  # an x402 payment id


def _body(rows: np.ndarray | None = None) -> tuple[bytes, dict[str, str]]:
    x = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32) if rows is None else rows
    return codecs.encode_request({"features": x})


def call(world: World, payment: str | None = None, rows: np.ndarray | None = None) -> Any:
    body, headers = _body(rows)
    if payment is not None:
        headers["PAYMENT-SIGNATURE"] = payment
    return world.client.post(f"/v2/models/{world.model_id}/infer", data=body, headers=headers)  # type: ignore[attr-defined]


def balances(world: World, who: int = PAYER) -> tuple[int, int]:
    """(the payer's tokens, the seller's earnings)."""
    market = world.market
    return market.token_balance(world.signers[who].address), market.earnings(
        world.signers[1].address
    )


def rows(world: World) -> list[tuple[str, bool]]:
    with session_factory(make_engine(world.settings.db_url))() as s:
        return [tuple(r) for r in s.execute(select(X402Payment.status, X402Payment.delivered))]  # type: ignore[misc]


def domain(world: World) -> tuple[str, str, int, str]:
    return world.market.eip712_domain()


def gateway(world: World) -> Any:
    return world.client.application.extensions["modelmarket"]  # type: ignore[attr-defined]


def test_the_sdk_client_pays_a_call_over_http(world: World):
    before = balances(world)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/{world.model_id}/infer"
    with serving(world.settings, port):
        network = f"eip155:{world.market.deployment.chain_id}"
        session = x402_requests(sdk_client(dev_key(PAYER), network, world.market.deployment.token))
        body, headers = _body()
        answer = session.post(url, data=body, headers=headers, timeout=60)

    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["label"]["data"] == [0]
    settled = payment_response(answer)
    assert settled["success"] is True
    assert settled["network"] == network
    assert settled["payer"] == world.signers[PAYER].address
    receipt = world.market.w3.eth.get_transaction_receipt(settled["transaction"])
    assert receipt["status"] == 1
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)
    assert "PAYMENT-RESPONSE" in answer.headers["Access-Control-Expose-Headers"]

    # the indexer records the sale on-chain, per model, beside purchases
    world.mine(1)
    world.index()
    with session_factory(make_engine(world.settings.db_url))() as s:
        sale = s.execute(select(Purchase)).scalar_one()
        assert (sale.model_id, sale.state, sale.calls, sale.amount, sale.fee) == (
            world.model_id,
            "per_call",
            1,
            PRICE,
            FEE,
        )
        usage = s.execute(select(Usage)).scalar_one()
        assert (usage.key_id, usage.status, usage.buyer) == (
            "x402",
            "ok",
            world.signers[PAYER].address.lower(),
        )
    seller_page = world.client.get(f"/api/v1/sellers/{world.signers[1].address}/models")  # type: ignore[attr-defined]
    assert seller_page.get_json()[0]["calls_sold"] == 1


def test_the_402_offers_exact_beside_prepaid(world: World):
    refused = call(world)
    assert refused.status_code == 402
    need = required(refused)
    assert [o.scheme for o in need.accepts] == ["prepaid-credits", "exact"]
    exact = exact_offer(refused)
    assert exact["amount"] == str(PRICE)
    assert exact["payTo"] == world.market.contract.address
    assert exact["asset"].lower() == world.market.deployment.token.lower()
    assert exact["extra"] == {"name": "ModelMarket Token", "version": "1"}
    assert exact["network"] == f"eip155:{world.market.deployment.chain_id}"
    assert need.resource is not None and need.resource.url.endswith("/infer")
    assert "payment-identifier" in (need.extensions or {})
    # the body keeps the marketplace's shape, every offer in it
    assert [o["scheme"] for o in refused.get_json()["accepts"]] == ["prepaid-credits", "exact"]


@pytest.mark.parametrize(
    "case", ["expired", "not_yet_valid", "below_price", "other_key", "no_balance", "other_payee"]
)
def test_a_bad_payment_is_refused_and_moves_nothing(world: World, case: str):
    offer = exact_offer(call(world))
    now = int(time.time())
    key = dev_key(PAYER)
    kwargs: dict[str, Any] = {}
    if case == "expired":
        kwargs["valid_before"] = now - 1
    elif case == "not_yet_valid":
        kwargs["valid_after"] = now + 600
    elif case == "below_price":
        kwargs["value"] = PRICE - 1
    elif case == "other_key":
        kwargs["signer_key"] = dev_key(4)
    elif case == "no_balance":
        key = "0x" + "5a" * 32  # an account holding no tokens
    else:
        offer = {**offer, "payTo": world.signers[4].address}
    before = balances(world), world.market.token_balance(Account.from_key(key).address)
    refused = call(world, signed_payment(offer, key, domain(world), **kwargs))
    assert refused.status_code == 402, refused.get_json()
    assert refused.get_json()["code"] == "payment_invalid"
    assert refused.headers["PAYMENT-REQUIRED"]  # offers again: nothing was taken
    after = balances(world), world.market.token_balance(Account.from_key(key).address)
    assert after == before
    assert rows(world) == []


def test_an_unreadable_payment_is_a_402_with_the_offers(world: World):
    for junk in ("not base64 at all", "e30=", "eyJ4NDAyVmVyc2lvbiI6IDJ9"):  # "{}", a bare version
        refused = call(world, junk)
        assert refused.status_code == 402 and refused.get_json()["code"] == "payment_invalid"
        assert [o.scheme for o in required(refused).accepts] == ["prepaid-credits", "exact"]
    assert rows(world) == []


def test_a_replayed_payment_pays_once(world: World):
    payment = sdk_payment(PAYER, call(world))
    before = balances(world)
    first = call(world, payment)
    assert first.status_code == 200
    again = call(world, payment)
    assert again.status_code == 409 and again.get_json()["code"] == "payment_already_used"
    assert payment_response(again)["transaction"] == payment_response(first)["transaction"]
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)
    assert rows(world) == [("settled", True)]


def test_a_payment_made_for_another_model_is_refused(world: World):
    # an SDK payment for model 1 (its resource URL), lifted and sent to another listing
    # at the same price: refused, though the amount and payee would do
    cid = world.market.listing(world.model_id).model_cid
    other, _ = world.market.list_model(world.signers[1], cid, cid, PRICE)
    world.mine(1)
    world.index()
    gateway(world).listing(other, max_age=0)
    payment = sdk_payment(PAYER, call(world))
    before = balances(world)
    body, headers = _body()
    lifted = world.client.post(  # type: ignore[attr-defined]
        f"/v2/models/{other}/infer", data=body, headers={**headers, "PAYMENT-SIGNATURE": payment}
    )
    assert lifted.status_code == 402, lifted.get_json()
    assert "another resource" in lifted.get_json()["error"]
    assert balances(world) == before
    assert call(world, payment).status_code == 200  # where it was made for, it pays


def test_a_failed_inference_settles_nothing(world: World):
    payment = sdk_payment(PAYER, call(world))
    before = balances(world)
    failed = call(world, payment, np.zeros((1, 7), np.float32))  # iris takes 4 features
    assert failed.status_code == 400
    assert balances(world) == before
    assert rows(world) == [("released", False)]
    # the same authorization, still unused, pays for a call that works
    ok = call(world, payment)
    assert ok.status_code == 200
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)


def test_a_settlement_that_times_out_is_charged_once_and_answered_later(world: World):
    gw = gateway(world)
    gw.x402.reconciler.settle_timeout = 1.0
    w3 = world.market.w3
    payment = sdk_payment(PAYER, call(world))
    before = balances(world)
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        pending = call(world, payment)
        assert pending.status_code == 504, pending.get_json()
        assert pending.get_json()["code"] == "settlement_pending"
        assert "PAYMENT-REQUIRED" not in pending.headers  # no invitation to pay again
        assert pending.headers["Retry-After"]
        assert rows(world) == [("sending", False)]
        health = world.client.get("/v2/health/ready").get_json()["x402"]  # type: ignore[attr-defined]
        assert health == {"reconciler": "running", "reserved": 0, "sending": 1, "failed": 0}
        retry = call(world, payment)  # still not mined: the same answer, no second charge
        assert retry.status_code == 504
    finally:
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    world.mine(1)
    time.sleep(1.1)
    gw.x402.reconcile()  # (or the background reconciler, whichever looks first)
    assert rows(world) == [("settled", False)]
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)
    # the authorization is public in the mined calldata: sent by someone else with
    # another request, it buys nothing (and does not take the answer owed to the payer)
    lifted = call(world, payment, np.array([[6.0, 3.0, 4.8, 1.8]], np.float32))
    assert lifted.status_code == 409, lifted.get_json()
    answered = call(world, payment)  # the answer it paid for, once
    assert answered.status_code == 200
    assert payment_response(answered)["success"] is True
    assert call(world, payment).status_code == 409
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)


def test_a_crash_between_reserving_and_settling_is_reconciled(world: World):
    """The crash is simulated: the call's payment is begun and then abandoned, which is
    what a worker killed mid-inference leaves in the database (a process kill cannot be
    timed into that window from a test); a new gateway then starts on it."""
    gw = gateway(world)
    payment = sdk_payment(PAYER, call(world))
    listing = gw.listing(world.model_id)
    method, payer = gw.payments.identify({"PAYMENT-SIGNATURE": payment})
    gw.payments.begin(method, payer, listing)  # ... and the worker dies here
    assert rows(world) == [("reserved", False)]
    before = balances(world)
    busy = call(world, payment)  # while it is reserved, the payment cannot pay again
    assert busy.status_code == 409 and busy.get_json()["code"] == "payment_in_progress"

    from app import create_app

    restarted = create_app(world.settings.model_copy(update={"x402_reservation_ttl": 0.5}))
    try:
        time.sleep(0.6)
        restarted.extensions["modelmarket"].x402.reconcile()
        assert rows(world) == [("released", False)]
        assert balances(world) == before  # nothing was sent
        ok = restarted.test_client().post(
            f"/v2/models/{world.model_id}/infer",
            data=_body()[0],
            headers={**_body()[1], "PAYMENT-SIGNATURE": payment},
        )
        assert ok.status_code == 200
        assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)
    finally:
        restarted.extensions["modelmarket"].x402.close()
        restarted.extensions["modelmarket"].prepaid.close()


def test_an_authorization_submitted_first_by_someone_else_credits_the_seller_once(world: World):
    gw = gateway(world)
    payment = sdk_payment(PAYER, call(world))
    listing = gw.listing(world.model_id)
    method, payer = gw.payments.identify({"PAYMENT-SIGNATURE": payment})
    begun = gw.payments.begin(method, payer, listing)
    before = balances(world)
    # between the check and the settlement, a stranger submits it straight to the token
    auth = begun.auth
    token = world.market.token
    front = token.functions.transferWithAuthorization(
        auth.payer,
        auth.to,
        auth.value,
        auth.valid_after,
        auth.valid_before,
        auth.nonce,
        auth.signature,
    )
    from marketplace.chain.transactions import send
    from tests.support.paths import ARTIFACTS

    send(world.market.w3, front, world.signers[4], ARTIFACTS)
    assert world.market.token_balance(world.market.contract.address) >= PRICE
    headers = gw.payments.complete(method, begun, listing)
    assert headers["PAYMENT-RESPONSE"]
    # the payer paid once (by the stranger's transaction); the seller was credited once
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)
    assert rows(world) == [("settled", True)]
    assert call(world, payment).status_code == 409
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)


def test_a_payment_id_is_charged_once(world: World):
    offer = exact_offer(call(world))
    first = signed_payment(offer, dev_key(PAYER), domain(world), payment_id=ORDER)
    before = balances(world)
    assert call(world, first).status_code == 200
    # the client lost the answer and pays again with a fresh authorization, same id
    second = signed_payment(offer, dev_key(PAYER), domain(world), payment_id=ORDER)
    again = call(world, second)
    assert again.status_code == 409 and again.get_json()["code"] == "payment_already_used"
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)


def test_a_crash_after_sending_the_settlement_charges_once_and_answers_once(world: World):
    """The crash is simulated as above: the settlement is signed, stored and sent, and
    the worker dies before it answers. The payer paid; the restarted gateway finds the
    transaction mined and owes the payer one answer, given to the same payment sent
    again, once."""
    from marketplace.payments.x402 import settlements

    gw = gateway(world)
    payment = sdk_payment(PAYER, call(world))
    listing = gw.listing(world.model_id)
    method, payer = gw.payments.identify({"PAYMENT-SIGNATURE": payment})
    begun = gw.payments.begin(method, payer, listing)
    before = balances(world)
    key = settlements.key(begun.auth)

    def record(signed: Any) -> None:
        with gw.engine.begin() as conn:
            settlements.sending(conn, *key, signed)

    gw.settler().send(world.model_id, begun.auth, begun.gas, record)  # ... and dies here
    assert rows(world) == [("sending", False)]
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)

    from app import create_app

    restarted = create_app(world.settings.model_copy(update={"x402_settle_timeout": 0.5}))
    try:
        time.sleep(0.6)
        restarted.extensions["modelmarket"].x402.reconcile()
        assert rows(world) == [("settled", False)]
        client = restarted.test_client()
        url = f"/v2/models/{world.model_id}/infer"
        body, headers = _body()
        owed = client.post(url, data=body, headers={**headers, "PAYMENT-SIGNATURE": payment})
        assert owed.status_code == 200
        assert payment_response(owed)["success"] is True
        again = client.post(url, data=body, headers={**headers, "PAYMENT-SIGNATURE": payment})
        assert again.status_code == 409
        assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)
    finally:
        restarted.extensions["modelmarket"].x402.close()
        restarted.extensions["modelmarket"].prepaid.close()


def test_a_settler_out_of_gas_charges_nothing_and_the_payment_stays_good(world: World):
    gw = gateway(world)
    settler = gw.settler().address
    w3 = world.market.w3
    payment = sdk_payment(PAYER, call(world))
    before = balances(world)
    w3.provider.make_request("anvil_setBalance", [settler, "0x0"])  # type: ignore[arg-type]
    refused = call(world, payment)
    assert refused.status_code == 503 and refused.get_json()["code"] == "settlement_refused"
    assert balances(world) == before
    assert rows(world) == [("released", False)]
    w3.provider.make_request("anvil_setBalance", [settler, hex(10**18)])  # type: ignore[arg-type]
    assert call(world, payment).status_code == 200  # the operator refilled it: it pays now
    assert balances(world) == (before[0] - PRICE, before[1] + PRICE - FEE)


def test_a_worker_dying_while_giving_an_owed_answer_leaves_it_owed(world: World):
    """Simulated as above: a settled payment's owed answer is claimed by a call whose
    worker then dies; after the reservation TTL the answer is owed again, once."""
    from app import create_app

    gw = gateway(world)
    gw.x402.reconciler.settle_timeout = 1.0
    w3 = world.market.w3
    payment = sdk_payment(PAYER, call(world))
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        assert call(world, payment).status_code == 504
    finally:
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    world.mine(1)
    time.sleep(1.1)
    gw.x402.reconcile()
    assert rows(world) == [("settled", False)]
    listing = gw.listing(world.model_id)
    method, payer = gw.payments.identify({"PAYMENT-SIGNATURE": payment})
    body = _body()[0]
    import hashlib

    payer = payer._replace(request=hashlib.sha256(body).digest())
    gw.payments.begin(method, payer, listing)  # claims the owed answer ... and dies
    assert rows(world) == [("settled", True)]
    assert call(world, payment).status_code == 409  # claimed: not given twice
    restarted = create_app(world.settings.model_copy(update={"x402_reservation_ttl": 0.5}))
    try:
        time.sleep(0.6)
        restarted.extensions["modelmarket"].x402.reconcile()
        assert rows(world) == [("settled", False)]  # owed again
    finally:
        restarted.extensions["modelmarket"].x402.close()
        restarted.extensions["modelmarket"].prepaid.close()
    assert call(world, payment).status_code == 200
    assert call(world, payment).status_code == 409
