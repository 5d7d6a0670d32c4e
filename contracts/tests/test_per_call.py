"""Per-call payments (x402's `exact` scheme): a settler submits the payer's EIP-3009
authorization to the marketplace, which moves the price in and credits the seller less
the fee, recorded per model; no one else can settle or redirect it."""

import brownie
import pytest
from brownie import chain
from conftest import FEE_BPS, PRICE
from test_eip3009 import authorize


@pytest.fixture
def settler(accounts, market, owner):
    market.setSettler(accounts[5], True, {"from": owner})
    return accounts[5]


@pytest.fixture
def payer(accounts, token, owner):
    holder = accounts.add()
    owner.transfer(holder, "1 ether")
    token.transfer(holder, 10 * PRICE, {"from": owner})
    return holder


def _settle(market, model_id, args, signed, sender):
    payer, _to, value, after, before, nonce = args
    return market.settlePerCall(
        model_id, payer, value, after, before, nonce, signed.signature, {"from": sender}
    )


def test_a_settled_call_pays_the_seller_less_the_fee(
    market, token, model_id, seller, payer, settler
):
    args, signed = authorize(token, payer, market, PRICE)
    tx = _settle(market, model_id, args, signed, settler)
    fee = PRICE * FEE_BPS // 10_000
    assert tx.events["PaidPerCall"]["modelId"] == model_id
    assert tx.events["PaidPerCall"]["payer"] == payer
    assert tx.events["PaidPerCall"]["amount"] == PRICE
    assert tx.events["PaidPerCall"]["fee"] == fee
    assert tx.events["PaidPerCall"]["nonce"] == "0x" + bytes(args[5]).hex()
    assert token.balanceOf(payer) == 9 * PRICE
    assert token.balanceOf(market) == PRICE
    assert market.earnings(seller, token) == PRICE - fee
    assert market.protocolFees(token) == fee
    assert token.authorizationState(payer, args[5])


def test_only_a_settler_settles(market, token, model_id, payer, stranger, owner):
    args, signed = authorize(token, payer, market, PRICE)
    # not even the owner: settling is the gateway's job, and a stranger holding a
    # buyer's signature must not be able to steer the payment to another model
    for sender in (stranger, owner):
        with brownie.reverts():
            _settle(market, model_id, args, signed, sender)
    assert token.balanceOf(payer) == 10 * PRICE


def test_the_owner_can_revoke_a_settler(market, token, model_id, payer, settler, owner):
    tx = market.setSettler(settler, False, {"from": owner})
    assert tx.events["SettlerSet"]["allowed"] is False
    args, signed = authorize(token, payer, market, PRICE)
    with brownie.reverts():
        _settle(market, model_id, args, signed, settler)
    with brownie.reverts():
        market.setSettler(settler, True, {"from": settler})


@pytest.mark.parametrize("case", ["replayed", "expired", "not_yet_valid", "other_key", "broke"])
def test_a_bad_authorization_moves_nothing(
    market, token, model_id, seller, payer, settler, accounts, case
):
    now = chain.time()
    if case == "expired":
        args, signed = authorize(token, payer, market, PRICE, before=now - 1)
    elif case == "not_yet_valid":
        args, signed = authorize(token, payer, market, PRICE, after=now + 3600)
    elif case == "other_key":
        args, signed = authorize(token, payer, market, PRICE, key=accounts.add().private_key)
    elif case == "broke":
        args, signed = authorize(token, payer, market, 11 * PRICE)
    else:
        args, signed = authorize(token, payer, market, PRICE)
        _settle(market, model_id, args, signed, settler)
    before = token.balanceOf(payer), market.earnings(seller, token)
    with brownie.reverts():
        _settle(market, model_id, args, signed, settler)
    assert (token.balanceOf(payer), market.earnings(seller, token)) == before


def test_an_unknown_model_is_refused(market, token, payer, settler):
    args, signed = authorize(token, payer, market, PRICE)
    with brownie.reverts():
        _settle(market, 999, args, signed, settler)
    assert not token.authorizationState(payer, args[5])


def test_paused_stops_settling(market, token, model_id, payer, settler, owner):
    market.pause({"from": owner})
    args, signed = authorize(token, payer, market, PRICE)
    with brownie.reverts():
        _settle(market, model_id, args, signed, settler)


def test_an_authorization_submitted_to_the_token_first_is_credited_once(
    market, token, model_id, seller, payer, settler, stranger
):
    args, signed = authorize(token, payer, market, PRICE)
    # someone else submits it straight to the token: the price arrives, no seller is paid
    token.transferWithAuthorization(*args, signed.signature, {"from": stranger})
    assert token.balanceOf(market) == PRICE
    assert market.earnings(seller, token) == 0
    with brownie.reverts():  # the settler's own submission now fails at the token
        _settle(market, model_id, args, signed, settler)
    # the settler, having seen the transfer in the token's logs, credits it instead
    tx = market.creditSubmittedAuthorization(model_id, payer, PRICE, args[5], {"from": settler})
    fee = PRICE * FEE_BPS // 10_000
    assert tx.events["PaidPerCall"]["amount"] == PRICE
    assert market.earnings(seller, token) == PRICE - fee
    with brownie.reverts():  # once
        market.creditSubmittedAuthorization(model_id, payer, PRICE, args[5], {"from": settler})
    with brownie.reverts():  # and only a settler
        market.creditSubmittedAuthorization(model_id, payer, PRICE, args[5], {"from": stranger})


def test_an_unused_authorization_cannot_be_credited(market, token, model_id, payer, settler):
    args, _ = authorize(token, payer, market, PRICE)
    with brownie.reverts():
        market.creditSubmittedAuthorization(model_id, payer, PRICE, args[5], {"from": settler})


def test_a_settler_cannot_credit_money_that_never_arrived(
    market, token, model_id, seller, payer, settler, buyer
):
    """A compromised settler key: it can make an authorization "used" without a transfer
    to us (the payer cancels it, or it settles through settlePerCall already), then try
    to credit it, or credit more than arrived. Only unattributed money can be credited."""
    # sellers' earnings sit in the contract: the money a drain would take
    token.approve(market, 10 * PRICE, {"from": buyer})
    market.purchase(model_id, 10, PRICE, {"from": buyer})
    held = token.balanceOf(market)
    assert market.owed(token) == held
    # 1. an authorization already settled through settlePerCall, credited again
    args, signed = authorize(token, payer, market, PRICE)
    _settle(market, model_id, args, signed, settler)
    with brownie.reverts():
        market.creditSubmittedAuthorization(model_id, payer, PRICE, args[5], {"from": settler})
    # 2. a front-run of PRICE, credited as if it were the whole balance
    args, signed = authorize(token, payer, market, PRICE)
    token.transferWithAuthorization(*args, signed.signature, {"from": buyer})
    big = token.balanceOf(market)
    with brownie.reverts():
        market.creditSubmittedAuthorization(model_id, payer, big, args[5], {"from": settler})
    market.creditSubmittedAuthorization(model_id, payer, PRICE, args[5], {"from": settler})
    assert market.owed(token) == token.balanceOf(market)  # everything held is owed once
    earned = market.earnings(seller, token)
    market.withdraw(token, {"from": seller})
    assert token.balanceOf(seller) >= earned
