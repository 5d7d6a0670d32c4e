"""The one test chain setup: the contracts deployed on an anvil by dev account 0, and
every other dev account funded (and, if asked, the marketplace approved to spend)."""

from __future__ import annotations

from web3 import Web3

from marketplace.chain.market import Marketplace, deploy_marketplace
from marketplace.chain.transactions import Signer, send
from tests.support.paths import ARTIFACTS

FUNDS = 10**24  # tokens each funded account holds


def funded_market(
    w3: Web3, signers: list[Signer], *, fee_bps: int = 250, approve: bool = False
) -> Marketplace:
    """Deploy with signers[0] as owner; fund signers[1:]."""
    owner, *others = signers
    market = Marketplace(w3, deploy_marketplace(w3, owner, ARTIFACTS, fee_bps=fee_bps), ARTIFACTS)
    for signer in others:
        send(w3, market.token.functions.mint(signer.address, FUNDS), owner, ARTIFACTS)
        if approve:
            market.approve(signer, FUNDS)
    return market
