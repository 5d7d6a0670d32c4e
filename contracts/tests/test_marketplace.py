"""Every function of ModelMarketplace and MarketToken, and every revert path."""

import brownie
import pytest
from brownie import ZERO_ADDRESS, chain
from conftest import BUYER_FUNDS, FEE_BPS, MAX_CALLS, META_CID, MODEL_CID, PRICE
from eth_account import Account
from eth_account.messages import encode_typed_data


def plain(values):
    """Brownie's return and event values as plain Python, for tuple comparisons."""
    return tuple(
        v if isinstance(v, bool) else int(v) if isinstance(v, int) else str(v) for v in values
    )


def reverts(name):
    """Expect a revert with the custom error `name` (brownie renders 'Name: args')."""
    return brownie.reverts(revert_pattern=rf"{name}(:.*)?")


# ------------------------------------------------------------------ deployment


def test_deployment_state(market, owner, treasury, token):
    assert market.owner() == owner
    assert market.treasury() == treasury
    assert market.feeBps() == FEE_BPS
    assert market.MAX_FEE_BPS() == 1000
    assert market.listingCount() == 0
    assert market.tokenAllowed(token)
    assert not market.paused()


def test_constructor_refuses_fee_above_cap(ModelMarketplace, owner, treasury):
    with reverts("FeeAboveCap"):
        ModelMarketplace.deploy(owner, treasury, 1001, {"from": owner})


def test_constructor_refuses_zero_treasury(ModelMarketplace, owner):
    with reverts("ZeroAddress"):
        ModelMarketplace.deploy(owner, ZERO_ADDRESS, 100, {"from": owner})


def test_constructor_refuses_zero_owner(ModelMarketplace, owner, treasury):
    with reverts("OwnableInvalidOwner"):
        ModelMarketplace.deploy(ZERO_ADDRESS, treasury, 100, {"from": owner})


# --------------------------------------------------------------------- listing


def test_list_model_records_and_emits(market, token, seller):
    tx = market.listModel(MODEL_CID, META_CID, token, PRICE, {"from": seller})
    assert tx.return_value == 1
    ev = tx.events["ModelListed"]
    assert ev["modelId"] == 1
    assert ev["seller"] == seller
    assert ev["token"] == token
    assert ev["modelCid"] == MODEL_CID
    assert ev["metadataCid"] == META_CID
    assert ev["pricePerCall"] == PRICE
    assert plain(market.getListing(1)) == (seller, True, token, PRICE, MODEL_CID, META_CID)
    second = market.listModel(MODEL_CID, META_CID, token, 1, {"from": seller}).return_value
    assert second == 2
    assert market.listingCount() == 2


@pytest.mark.parametrize("cids", [("", META_CID), (MODEL_CID, "")])
def test_list_model_refuses_empty_cid(market, token, seller, cids):
    with reverts("EmptyCid"):
        market.listModel(*cids, token, PRICE, {"from": seller})


def test_list_model_refuses_unlisted_token(market, seller, stranger):
    with reverts("TokenNotAllowed"):
        market.listModel(MODEL_CID, META_CID, stranger, PRICE, {"from": seller})


@pytest.mark.parametrize("price", [0, 2**96])
def test_list_model_refuses_bad_price(market, token, seller, price):
    with reverts("InvalidPrice"):
        market.listModel(MODEL_CID, META_CID, token, price, {"from": seller})


def test_list_model_accepts_max_price(market, token, seller):
    market.listModel(MODEL_CID, META_CID, token, 2**96 - 1, {"from": seller})
    assert market.getListing(1)[3] == 2**96 - 1


def test_list_model_refused_while_paused(market, token, seller, owner):
    market.pause({"from": owner})
    with reverts("EnforcedPause"):
        market.listModel(MODEL_CID, META_CID, token, PRICE, {"from": seller})


def test_get_listing_unknown(market):
    with reverts("UnknownModel"):
        market.getListing(7)


# ---------------------------------------------------------- seller-only changes


def test_set_price(market, model_id, seller):
    tx = market.setPrice(model_id, PRICE * 3, {"from": seller})
    assert plain(tx.events["PriceChanged"].values()) == plain([model_id, PRICE, PRICE * 3])
    assert market.getListing(model_id)[3] == PRICE * 3


def test_set_price_only_seller(market, model_id, stranger, owner):
    for caller in (stranger, owner):
        with reverts("NotSeller"):
            market.setPrice(model_id, 1, {"from": caller})


def test_set_price_unknown_and_invalid(market, model_id, seller):
    with reverts("UnknownModel"):
        market.setPrice(99, 1, {"from": seller})
    with reverts("InvalidPrice"):
        market.setPrice(model_id, 0, {"from": seller})


def test_delist_and_relist(market, model_id, seller):
    tx = market.delist(model_id, {"from": seller})
    assert "ModelDelisted" in tx.events
    assert market.getListing(model_id)[1] is False
    with reverts("ListingInactive"):
        market.delist(model_id, {"from": seller})
    tx = market.relist(model_id, {"from": seller})
    assert "ModelRelisted" in tx.events
    assert market.getListing(model_id)[1] is True
    with reverts("ListingActive"):
        market.relist(model_id, {"from": seller})


def test_delist_relist_only_seller(market, model_id, seller, stranger, owner):
    for caller in (stranger, owner):
        with reverts("NotSeller"):
            market.delist(model_id, {"from": caller})
    market.delist(model_id, {"from": seller})
    for caller in (stranger, owner):
        with reverts("NotSeller"):
            market.relist(model_id, {"from": caller})
    with reverts("UnknownModel"):
        market.delist(42, {"from": seller})


def test_relist_needs_allowed_token_and_no_pause(market, model_id, seller, owner, token):
    market.delist(model_id, {"from": seller})
    market.setTokenAllowed(token, False, {"from": owner})
    with reverts("TokenNotAllowed"):
        market.relist(model_id, {"from": seller})
    market.setTokenAllowed(token, True, {"from": owner})
    market.pause({"from": owner})
    with reverts("EnforcedPause"):
        market.relist(model_id, {"from": seller})
    # delisting stays possible while paused: a seller can always stop selling
    market.unpause({"from": owner})
    market.relist(model_id, {"from": seller})
    market.pause({"from": owner})
    market.delist(model_id, {"from": seller})


# -------------------------------------------------------------------- purchase


def test_purchase_moves_money_and_emits(market, model_id, token, buyer, seller):
    calls = 100
    amount = calls * PRICE
    fee = amount * FEE_BPS // 10_000
    token.approve(market, amount, {"from": buyer})
    tx = market.purchase(model_id, calls, PRICE, {"from": buyer})
    assert tx.return_value == amount
    ev = tx.events["Purchased"]
    assert plain([ev["modelId"], ev["buyer"], ev["calls"], ev["amount"], ev["fee"]]) == (
        model_id,
        buyer,
        calls,
        amount,
        fee,
    )
    assert token.balanceOf(buyer) == BUYER_FUNDS - amount
    assert token.balanceOf(market) == amount
    assert market.earnings(seller, token) == amount - fee
    assert market.protocolFees(token) == fee


def test_purchase_fee_rounds_down_for_seller(market, token, seller, buyer, owner):
    mid = market.listModel(MODEL_CID, META_CID, token, 3, {"from": seller}).return_value
    token.approve(market, 3, {"from": buyer})
    tx = market.purchase(mid, 1, 3, {"from": buyer})
    assert tx.events["Purchased"]["fee"] == 0  # 3 * 250 / 10000 rounds to 0
    assert market.earnings(seller, token) == 3
    assert market.protocolFees(token) == 0


def test_purchase_with_zero_fee(market, model_id, token, buyer, seller, owner):
    market.setFee(0, {"from": owner})
    token.approve(market, PRICE, {"from": buyer})
    market.purchase(model_id, 1, PRICE, {"from": buyer})
    assert market.earnings(seller, token) == PRICE
    assert market.protocolFees(token) == 0


def test_purchase_refuses_price_above_max(market, model_id, token, buyer, seller):
    token.approve(market, 10 * PRICE * 2, {"from": buyer})
    # the seller raises the price under a pending purchase
    market.setPrice(model_id, PRICE * 2, {"from": seller})
    with reverts("PriceAboveMax"):
        market.purchase(model_id, 10, PRICE, {"from": buyer})
    assert token.balanceOf(buyer) == BUYER_FUNDS


def test_purchase_refusals(market, model_id, token, buyer, seller, owner):
    token.approve(market, 10**22, {"from": buyer})
    with reverts("UnknownModel"):
        market.purchase(99, 1, PRICE, {"from": buyer})
    with reverts("ZeroCalls"):
        market.purchase(model_id, 0, PRICE, {"from": buyer})
    market.delist(model_id, {"from": seller})
    with reverts("ListingInactive"):
        market.purchase(model_id, 1, PRICE, {"from": buyer})
    market.relist(model_id, {"from": seller})
    market.pause({"from": owner})
    with reverts("EnforcedPause"):
        market.purchase(model_id, 1, PRICE, {"from": buyer})
    assert token.balanceOf(buyer) == BUYER_FUNDS


def test_purchase_needs_allowance_and_balance(market, model_id, token, buyer, accounts):
    with reverts("ERC20InsufficientAllowance"):
        market.purchase(model_id, 1, PRICE, {"from": buyer})
    penniless = accounts[9]
    token.approve(market, PRICE, {"from": penniless})
    with reverts("ERC20InsufficientBalance"):
        market.purchase(model_id, 1, PRICE, {"from": penniless})


def test_purchase_overflow_reverts(market, token, seller, buyer):
    # the calls cap comes before any arithmetic: no overflow is reachable
    mid = market.listModel(MODEL_CID, META_CID, token, 2**96 - 1, {"from": seller}).return_value
    with reverts(f"TooManyCalls: {2**200}, {MAX_CALLS}"):
        market.purchase(mid, 2**200, 2**96, {"from": buyer})


# ------------------------------------------------------------ calls cap


@pytest.fixture
def cheap_model(market, token, seller):
    """A model at 1 wei per call, so MAX_CALLS calls cost MAX_CALLS wei."""
    return market.listModel(MODEL_CID, META_CID, token, 1, {"from": seller}).return_value


def test_max_calls_constant_matches_ledger(market):
    assert market.MAX_CALLS_PER_PURCHASE() == MAX_CALLS


def test_purchase_of_exactly_max_calls_succeeds(market, cheap_model, token, buyer, seller):
    token.approve(market, MAX_CALLS, {"from": buyer})
    tx = market.purchase(cheap_model, MAX_CALLS, 1, {"from": buyer})
    assert tx.events["Purchased"]["calls"] == MAX_CALLS
    assert tx.events["Purchased"]["amount"] == MAX_CALLS
    assert token.balanceOf(buyer) == BUYER_FUNDS - MAX_CALLS
    assert token.balanceOf(market) == MAX_CALLS


def test_purchase_above_max_calls_reverts(market, cheap_model, token, buyer, seller):
    token.approve(market, 2 * MAX_CALLS, {"from": buyer})
    for calls in (MAX_CALLS + 1, 2**256 - 1):
        with reverts(f"TooManyCalls: {calls}, {MAX_CALLS}"):
            market.purchase(cheap_model, calls, 1, {"from": buyer})
    assert token.balanceOf(buyer) == BUYER_FUNDS
    assert token.balanceOf(market) == 0
    assert token.allowance(buyer, market) == 2 * MAX_CALLS
    assert market.earnings(seller, token) == 0
    assert market.protocolFees(token) == 0


def test_purchase_up_to_the_books_capacity_and_no_further(market, token, seller, owner):
    """The contract books what it owes per token in 128 bits (one storage write per
    sale): a purchase up to 2**128 - 1 smallest units goes through exactly; one above
    (MAX_CALLS at the top price) reverts cleanly, so nothing the chain accepts overflows."""
    top = 2**96 - 1
    mid = market.listModel(MODEL_CID, META_CID, token, top, {"from": seller}).return_value
    rich = owner
    token.mint(rich, MAX_CALLS * top, {"from": owner})
    token.approve(market, MAX_CALLS * top, {"from": rich})
    calls = (2**128 - 1) // top  # the most calls at the top price the book can hold
    tx = market.purchase(mid, calls, top, {"from": rich})
    amount = calls * top
    assert tx.events["Purchased"]["amount"] == amount
    assert tx.events["Purchased"]["fee"] == amount * FEE_BPS // 10_000
    assert market.owed(token) == amount
    with brownie.reverts():
        market.purchase(mid, MAX_CALLS, top, {"from": rich})
    assert market.owed(token) == amount


def test_disallowed_token_keeps_existing_listing_selling(market, model_id, token, buyer, owner):
    market.setTokenAllowed(token, False, {"from": owner})
    token.approve(market, PRICE, {"from": buyer})
    market.purchase(model_id, 1, PRICE, {"from": buyer})
    assert market.earnings(market.getListing(model_id)[0], token) > 0


# -------------------------------------------------------------------- permit


def _permit(token, holder, spender, value, deadline):
    data = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {
            "name": token.name(),
            "version": "1",
            "chainId": chain.id,
            "verifyingContract": token.address,
        },
        "message": {
            "owner": holder.address,
            "spender": spender.address,
            "value": value,
            "nonce": token.nonces(holder),
            "deadline": deadline,
        },
    }
    signed = Account.sign_message(encode_typed_data(full_message=data), holder.private_key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


@pytest.fixture
def permit_buyer(accounts, token, owner):
    holder = accounts.add()
    owner.transfer(holder, "1 ether")
    token.transfer(holder, 100 * PRICE, {"from": owner})
    return holder


def test_purchase_with_permit_needs_no_approve(market, model_id, token, permit_buyer, seller):
    amount = 5 * PRICE
    deadline = chain.time() + 3600
    v, r, s = _permit(token, permit_buyer, market, amount, deadline)
    tx = market.purchaseWithPermit(
        model_id, 5, PRICE, amount, deadline, v, r, s, {"from": permit_buyer}
    )
    assert tx.events["Purchased"]["amount"] == amount
    assert token.balanceOf(permit_buyer) == 95 * PRICE
    assert token.allowance(permit_buyer, market) == 0


def test_purchase_with_front_run_permit_still_succeeds(
    market, model_id, token, permit_buyer, stranger
):
    amount = 5 * PRICE
    deadline = chain.time() + 3600
    v, r, s = _permit(token, permit_buyer, market, amount, deadline)
    # someone replays the permit first; the allowance is in place, so the purchase goes on
    token.permit(permit_buyer, market, amount, deadline, v, r, s, {"from": stranger})
    tx = market.purchaseWithPermit(
        model_id, 5, PRICE, amount, deadline, v, r, s, {"from": permit_buyer}
    )
    assert tx.events["Purchased"]["calls"] == 5


def test_purchase_with_expired_or_forged_permit(market, model_id, token, permit_buyer, buyer):
    amount = PRICE
    past = chain.time() - 10
    v, r, s = _permit(token, permit_buyer, market, amount, past)
    with reverts("ERC20InsufficientAllowance"):
        market.purchaseWithPermit(model_id, 1, PRICE, amount, past, v, r, s, {"from": permit_buyer})
    # a permit signed by the holder cannot be spent by another caller
    deadline = chain.time() + 3600
    v, r, s = _permit(token, permit_buyer, market, amount, deadline)
    with reverts("ERC20InsufficientAllowance"):
        market.purchaseWithPermit(model_id, 1, PRICE, amount, deadline, v, r, s, {"from": buyer})
    assert token.balanceOf(permit_buyer) == 100 * PRICE


def test_purchase_with_permit_of_exactly_max_calls_succeeds(
    market, cheap_model, token, permit_buyer
):
    deadline = chain.time() + 3600
    v, r, s = _permit(token, permit_buyer, market, MAX_CALLS, deadline)
    before = token.balanceOf(permit_buyer)
    tx = market.purchaseWithPermit(
        cheap_model, MAX_CALLS, 1, MAX_CALLS, deadline, v, r, s, {"from": permit_buyer}
    )
    assert tx.events["Purchased"]["calls"] == MAX_CALLS
    assert token.balanceOf(permit_buyer) == before - MAX_CALLS
    assert token.allowance(permit_buyer, market) == 0


def test_purchase_with_permit_above_max_calls_reverts(
    market, cheap_model, token, permit_buyer, seller
):
    calls = MAX_CALLS + 1
    deadline = chain.time() + 3600
    v, r, s = _permit(token, permit_buyer, market, calls, deadline)
    before = token.balanceOf(permit_buyer)
    nonce = token.nonces(permit_buyer)
    with reverts(f"TooManyCalls: {calls}, {MAX_CALLS}"):
        market.purchaseWithPermit(
            cheap_model, calls, 1, calls, deadline, v, r, s, {"from": permit_buyer}
        )
    # nothing moved, and the permit was rolled back with the purchase
    assert token.balanceOf(permit_buyer) == before
    assert token.balanceOf(market) == 0
    assert token.allowance(permit_buyer, market) == 0
    assert token.nonces(permit_buyer) == nonce
    assert market.earnings(seller, token) == 0


def test_purchase_with_permit_unknown_model(market, token, permit_buyer):
    with reverts("UnknownModel"):
        market.purchaseWithPermit(
            9, 1, PRICE, PRICE, 0, 27, b"\x00" * 32, b"\x00" * 32, {"from": permit_buyer}
        )


# -------------------------------------------------------------- withdrawals


@pytest.fixture
def sold(market, model_id, token, buyer):
    token.approve(market, 100 * PRICE, {"from": buyer})
    market.purchase(model_id, 100, PRICE, {"from": buyer})
    return 100 * PRICE


def test_withdraw(market, token, seller, sold):
    fee = sold * FEE_BPS // 10_000
    tx = market.withdraw(token, {"from": seller})
    assert plain(tx.events["Withdrawn"].values()) == plain([seller, token, sold - fee])
    assert token.balanceOf(seller) == sold - fee
    assert market.earnings(seller, token) == 0
    with reverts("NothingToWithdraw"):
        market.withdraw(token, {"from": seller})


def test_withdraw_works_while_paused(market, token, seller, owner, sold):
    market.pause({"from": owner})
    market.withdraw(token, {"from": seller})
    assert token.balanceOf(seller) > 0


def test_withdraw_fees_goes_to_treasury(market, token, owner, treasury, stranger, sold):
    fee = sold * FEE_BPS // 10_000
    with reverts("OwnableUnauthorizedAccount"):
        market.withdrawFees(token, {"from": stranger})
    tx = market.withdrawFees(token, {"from": owner})
    assert plain(tx.events["FeesWithdrawn"].values()) == plain([treasury, token, fee])
    assert token.balanceOf(treasury) == fee
    with reverts("NothingToWithdraw"):
        market.withdrawFees(token, {"from": owner})


def test_owner_cannot_move_seller_money(market, token, owner, seller, treasury, sold):
    owed = market.earnings(seller, token)
    # everything the owner can do with money: none of it reaches the seller's share
    with reverts("NothingToWithdraw"):
        market.withdraw(token, {"from": owner})
    market.setTreasury(owner, {"from": owner})
    market.withdrawFees(token, {"from": owner})
    market.setFee(1000, {"from": owner})
    market.pause({"from": owner})
    market.setTokenAllowed(token, False, {"from": owner})
    assert market.earnings(seller, token) == owed
    assert token.balanceOf(market) == owed
    market.withdraw(token, {"from": seller})
    assert token.balanceOf(seller) == owed
    assert token.balanceOf(market) == 0


# --------------------------------------------------------------------- owner


def test_owner_setters(market, owner, stranger, token):
    tx = market.setFee(500, {"from": owner})
    assert plain(tx.events["FeeChanged"].values()) == plain([FEE_BPS, 500])
    with reverts("FeeAboveCap"):
        market.setFee(1001, {"from": owner})
    tx = market.setTreasury(stranger, {"from": owner})
    assert tx.events["TreasuryChanged"]["newTreasury"] == stranger
    with reverts("ZeroAddress"):
        market.setTreasury(ZERO_ADDRESS, {"from": owner})
    tx = market.setTokenAllowed(token, False, {"from": owner})
    assert plain(tx.events["TokenAllowed"].values()) == plain([token, False])
    with reverts("ZeroAddress"):
        market.setTokenAllowed(ZERO_ADDRESS, True, {"from": owner})


@pytest.mark.parametrize(
    "call",
    [
        lambda m, t: m.setFee(1, {"from": m._stranger}),
        lambda m, t: m.setTreasury(m._stranger, {"from": m._stranger}),
        lambda m, t: m.setTokenAllowed(t, False, {"from": m._stranger}),
        lambda m, t: m.pause({"from": m._stranger}),
        lambda m, t: m.unpause({"from": m._stranger}),
    ],
    ids=["setFee", "setTreasury", "setTokenAllowed", "pause", "unpause"],
)
def test_owner_only(market, token, stranger, call):
    market._stranger = stranger
    with reverts("OwnableUnauthorizedAccount"):
        call(market, token)


def test_pause_unpause(market, owner):
    tx = market.pause({"from": owner})
    assert "Paused" in tx.events and market.paused()
    with reverts("EnforcedPause"):
        market.pause({"from": owner})
    tx = market.unpause({"from": owner})
    assert "Unpaused" in tx.events and not market.paused()
    with reverts("ExpectedPause"):
        market.unpause({"from": owner})


def test_ownership_is_two_step(market, owner, stranger):
    market.transferOwnership(stranger, {"from": owner})
    assert market.owner() == owner
    assert market.pendingOwner() == stranger
    with reverts("OwnableUnauthorizedAccount"):
        market.acceptOwnership({"from": owner})
    market.acceptOwnership({"from": stranger})
    assert market.owner() == stranger


# --------------------------------------------------------------------- token


def test_token_mint_only_owner(token, owner, stranger):
    before = token.balanceOf(stranger)
    token.mint(stranger, 5, {"from": owner})
    assert token.balanceOf(stranger) == before + 5
    with reverts("OwnableUnauthorizedAccount"):
        token.mint(stranger, 5, {"from": stranger})


def test_token_metadata(token, owner):
    assert token.name() == "ModelMarket Token"
    assert token.symbol() == "MMT"
    assert token.decimals() == 18
    assert token.DOMAIN_SEPARATOR() != "0x" + "00" * 32
