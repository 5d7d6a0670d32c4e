"""The chain binding (marketplace/chain/) against a real anvil and the real contracts:
transactions, events, and contract reverts reaching Python as domain errors with a human message."""

from __future__ import annotations

import logging
import pickle
import re
import time

import pytest
from web3 import Web3

from marketplace import errors
from marketplace.chain.artifacts import Deployment, load_artifact
from marketplace.chain.market import Marketplace, OnchainListing, deploy_marketplace
from marketplace.chain.transactions import Signer, connect, send, wait_for_receipt
from marketplace.devstack.anvil import ANVIL_CHAIN_ID, dev_key, dev_signers, start_anvil
from marketplace.devstack.ports import free_port
from marketplace.payments.prepaid import ledger
from tests.support.paths import ANVIL_BIN, ARTIFACTS

MODEL_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
META_CID = "bafkreidgvpkjawlxz6sffxzwgooowe5yt7i6wsyg236mfoks77nywkptdq"
PRICE = 2 * 10**16


def assert_human(exc: errors.ModelMarketError) -> None:
    """A message a person can read: no raw RPC dump, no revert data blob."""
    assert "execution reverted" not in exc.message
    assert "{" not in exc.message
    assert not re.search(r"0x[0-9a-fA-F]{64,}", exc.message), exc.message


@pytest.fixture
def listed(market: Marketplace, signers: list[Signer]) -> int:
    model_id, _ = market.list_model(signers[1], MODEL_CID, META_CID, PRICE)
    return model_id


def test_list_purchase_withdraw_walk(market, signers, listed):
    _owner, seller, buyer = signers[:3]
    listing = market.listing(listed)
    assert listing == OnchainListing(
        listed, seller.address, True, market.deployment.token, PRICE, MODEL_CID, META_CID
    )
    market.approve(buyer, 10 * PRICE)
    receipt = market.purchase(buyer, listed, 10, PRICE)
    (event,) = market.purchases(receipt)
    fee = 10 * PRICE * 250 // 10_000
    assert event.args["buyer"] == buyer.address.lower()
    assert (event.args["calls"], event.args["amount"], event.args["fee"]) == (
        10,
        10 * PRICE,
        fee,
    )
    assert market.earnings(seller.address) == 10 * PRICE - fee
    before = market.token_balance(seller.address)
    market.withdraw(seller)
    assert market.token_balance(seller.address) == before + 10 * PRICE - fee


def test_purchase_with_permit_signed_locally(market, signers, listed):
    buyer = signers[4]
    before = market.token_balance(buyer.address)
    receipt = market.purchase_with_permit(buyer, listed, 3, PRICE, deadline=int(time.time()) + 3600)
    assert market.purchases(receipt)[0].args["calls"] == 3
    assert market.token_balance(buyer.address) == before - 3 * PRICE


def test_foreign_logs_are_skipped(market, signers, listed):
    # The purchase receipt also holds the token's Transfer log: decoding skips it.
    market.approve(signers[2], PRICE)
    receipt = market.purchase(signers[2], listed, 1, PRICE)
    assert len(receipt["logs"]) == 2
    assert len(market.purchases(receipt)) == 1


# ------------------------------------------------------- reverts -> domain errors


def test_wrong_seller(market, signers, listed):
    with pytest.raises(errors.NotSeller) as info:
        market.set_price(signers[3], listed, 1)
    assert info.value.code == "not_seller"
    assert info.value.message == (
        f"only the seller of model {listed} ({signers[1].address}) can change it,"
        f" not {signers[3].address}"
    )
    assert_human(info.value)


def test_price_above_max(market, signers, listed):
    market.approve(signers[2], 10 * PRICE)
    market.set_price(signers[1], listed, PRICE * 2)
    with pytest.raises(errors.PriceAboveMax) as info:
        market.purchase(signers[2], listed, 5, PRICE)
    assert info.value.message == (
        f"the price per call is {PRICE * 2}, above the maximum of {PRICE} you agreed to pay"
    )
    assert info.value.http_status == 409
    assert_human(info.value)


def test_paused(market, signers, listed):
    market.pause(signers[0])
    market.approve(signers[2], PRICE)
    with pytest.raises(errors.MarketplacePaused) as info:
        market.purchase(signers[2], listed, 1, PRICE)
    assert "paused" in info.value.message
    assert_human(info.value)
    with pytest.raises(errors.MarketplacePaused):
        market.list_model(signers[1], MODEL_CID, META_CID, PRICE)


@pytest.mark.parametrize(
    ("action", "error", "text"),
    [
        (lambda m, s, i: m.listing(999), errors.ModelNotFound, "model 999 does not exist"),
        (
            lambda m, s, i: m.purchase(s[2], i, 1, PRICE),
            errors.InsufficientAllowance,
            "approve it first",
        ),
        (
            lambda m, s, i: m.purchase(s[2], i, 0, PRICE),
            errors.InvalidArgument,
            "at least one call",
        ),
        (
            lambda m, s, i: m.purchase(s[2], i, ledger.MAX_CREDITED_CALLS + 1, PRICE),
            errors.InvalidArgument,
            f"at most {ledger.MAX_CREDITED_CALLS} calls, not {ledger.MAX_CREDITED_CALLS + 1}",
        ),
        (lambda m, s, i: m.set_fee(s[3], 10), errors.NotOwner, "only the marketplace owner"),
        (
            lambda m, s, i: m.set_fee(s[0], 5000),
            errors.FeeAboveCap,
            "a fee of 5000 bps is above the hard cap of 1000 bps",
        ),
        (lambda m, s, i: m.withdraw(s[3]), errors.NothingToWithdraw, "has nothing to withdraw"),
        (
            lambda m, s, i: m.list_model(s[1], "", META_CID, PRICE),
            errors.InvalidArgument,
            "must not be empty",
        ),
        (
            lambda m, s, i: m.list_model(s[1], MODEL_CID, META_CID, 0),
            errors.InvalidPrice,
            "above 0",
        ),
        (
            lambda m, s, i: m.list_model(s[1], MODEL_CID, META_CID, PRICE, s[3].address),
            errors.TokenNotAllowed,
            "not on the marketplace's allowlist",
        ),
        (lambda m, s, i: m.relist(s[1], i), errors.ListingActive, "already listed"),
    ],
    ids=[
        "unknown-model",
        "no-allowance",
        "zero-calls",
        "too-many-calls",
        "not-owner",
        "fee-cap",
        "nothing",
        "empty-cid",
        "zero-price",
        "token-not-allowed",
        "relist-active",
    ],
)
def test_reverts_become_domain_errors(market, signers, listed, action, error, text):
    with pytest.raises(error) as info:
        action(market, signers, listed)
    assert text in info.value.message
    assert_human(info.value)


def test_the_chain_and_the_ledger_cap_calls_alike(market):
    # no purchase the chain accepts is one the ledger refuses to credit
    cap = market.contract.functions.MAX_CALLS_PER_PURCHASE().call()
    assert cap == ledger.MAX_CREDITED_CALLS


def test_insufficient_balance(market, signers, listed):
    poor = dev_signers(7)[6]  # holds ETH but no tokens
    market.approve(poor, PRICE)
    with pytest.raises(errors.InsufficientFunds) as info:
        market.purchase(poor, listed, 1, PRICE)
    assert info.value.message == f"{poor.address} holds 0 tokens but {PRICE} are needed"


def test_mined_revert_is_decoded(w3, market, signers, listed):
    # A transaction sent with a fixed gas limit skips estimation and is mined reverted;
    # the receipt alone says only "status 0", so the replay must recover the reason.
    stranger = signers[3]
    tx = market.contract.functions.delist(listed).build_transaction(
        {
            "from": stranger.address,
            "gas": 100_000,
            "nonce": w3.eth.get_transaction_count(stranger.address),
        }
    )
    tx_hash = w3.eth.send_raw_transaction(stranger.sign(tx))
    with pytest.raises(errors.NotSeller):
        wait_for_receipt(w3, tx_hash, ARTIFACTS, replay=tx)
    with pytest.raises(errors.ChainError, match="reverted in block"):
        wait_for_receipt(w3, tx_hash, ARTIFACTS)


# ------------------------------------------------------------------ the chain


def test_unreachable_chain_is_a_clear_error():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(errors.ChainUnavailable) as info:
        connect(f"http://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - started < 3
    assert info.value.message == f"cannot reach the JSON-RPC endpoint http://127.0.0.1:{port}"


def test_chain_stopping_midway(signers):
    node = start_anvil(ANVIL_BIN)
    try:
        w3 = connect(node.rpc_url)
        dep = deploy_marketplace(w3, signers[0], ARTIFACTS, fee_bps=0)
        market = Marketplace(w3, dep, ARTIFACTS)
    finally:
        node.stop()
    with pytest.raises(errors.ChainUnavailable):
        market.listing(1)
    with pytest.raises(errors.ChainUnavailable):
        market.list_model(signers[1], MODEL_CID, META_CID, PRICE)


def test_unmined_transaction_times_out(signers):
    node = start_anvil(ANVIL_BIN, extra_args=("--no-mining",))
    try:
        w3 = connect(node.rpc_url)
        token = w3.eth.contract(
            abi=load_artifact(ARTIFACTS, "MarketToken").abi,
            bytecode=load_artifact(ARTIFACTS, "MarketToken").bytecode,
        )
        started = time.monotonic()
        with pytest.raises(errors.TransactionTimeout, match=r"was not mined in 0\.5 s"):
            send(w3, token.constructor(signers[0].address, 1), signers[0], ARTIFACTS, timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        node.stop()


# ------------------------------------------------------------------ the key


def test_key_never_shown(w3, market, signers, listed, caplog):
    key_hex = dev_key(1)
    stranger = Signer(key_hex)
    assert key_hex[2:] not in repr(stranger) and key_hex[2:] not in str(stranger)
    with pytest.raises(TypeError):
        pickle.dumps(stranger)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.NotSeller) as info:
        market.set_price(Signer(dev_key(3)), listed, 1)
    market.approve(stranger, PRICE)  # a successful send, logged at DEBUG by web3
    text = " ".join([str(info.value), repr(info.value), caplog.text])
    for i in (1, 3):
        assert dev_key(i)[2:].lower() not in text.lower()


def test_bad_key_error_does_not_echo_it():
    bad = "0x" + "zz" * 32
    with pytest.raises(errors.ConfigurationError) as info:
        Signer(bad)
    assert "zz" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_deployment_record_round_trip(tmp_path, deployment):
    path = tmp_path / "d" / "deployment.json"
    deployment.save(path)
    assert Deployment.load(path) == deployment
    path.write_text("{not json")
    with pytest.raises(errors.ConfigurationError, match="unreadable"):
        Deployment.load(path)
    with pytest.raises(errors.ConfigurationError, match="deploy first"):
        Deployment.load(tmp_path / "missing.json")


def test_w3_is_real_anvil(w3: Web3):
    assert w3.eth.chain_id == ANVIL_CHAIN_ID


@pytest.mark.parametrize("status", [401, 429, 500])
def test_a_failing_rpc_endpoint_never_shows_its_key(status):
    # a hosted RPC URL carries its API key in the path; web3's own error quotes the URL
    import threading

    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    server = make_server(
        "127.0.0.1", free_port(), lambda env, start: Response("no", status)(env, start)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(errors.ChainUnavailable) as info:
            connect(f"http://127.0.0.1:{server.server_port}/v3/SECRET-API-KEY?key=alsosecret")
        assert "SECRET" not in info.value.message and "alsosecret" not in info.value.message
        assert f"127.0.0.1:{server.server_port}" in info.value.message
        assert str(status) in info.value.message
    finally:
        server.shutdown()
        thread.join(5)
