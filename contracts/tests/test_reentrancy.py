"""A hostile allowlisted token that re-enters the marketplace is refused."""

import brownie
from brownie import ZERO_ADDRESS
from conftest import META_CID, MODEL_CID


def test_reentrant_token_cannot_reenter(ReentrantToken, market, owner, seller, buyer):
    evil = ReentrantToken.deploy({"from": owner})
    evil.transfer(buyer, 10**24, {"from": owner})
    market.setTokenAllowed(evil, True, {"from": owner})
    mid = market.listModel(MODEL_CID, META_CID, evil, 100, {"from": seller}).return_value
    evil.approve(market, 10**24, {"from": buyer})

    # During purchase's transferFrom, the token buys again: the guard stops it.
    evil.arm(market, market.purchase.encode_input(mid, 1, 100), {"from": owner})
    with brownie.reverts(revert_pattern="ReentrancyGuardReentrantCall.*"):
        market.purchase(mid, 1, 100, {"from": buyer})

    # A clean purchase (the revert undid the disarm too), then during withdraw's
    # transfer the token withdraws again.
    evil.arm(ZERO_ADDRESS, b"", {"from": owner})
    market.purchase(mid, 10, 100, {"from": buyer})
    owed = market.earnings(seller, evil)
    evil.arm(market, market.withdraw.encode_input(evil), {"from": owner})
    with brownie.reverts(revert_pattern="ReentrancyGuardReentrantCall.*"):
        market.withdraw(evil, {"from": seller})
    assert market.earnings(seller, evil) == owed
    assert evil.balanceOf(market) == 1000
