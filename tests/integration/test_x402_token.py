"""MarketToken pays x402's `exact` scheme as the official SDK does it (x402 2.25.0,
unmodified): the SDK's client signs an EIP-3009 authorization, the SDK's own facilitator
verifies and settles it on anvil, and the same payment cannot settle twice. (The first
step of the x402 payment method: the token side.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_account import Account
from x402 import (
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    x402ClientSync,
    x402FacilitatorSync,
)
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.exact.register import register_exact_evm_facilitator
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer

from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import connect
from marketplace.devstack.anvil import Anvil, dev_key, dev_signers, start_anvil
from tests.support.market import funded_market
from tests.support.paths import ANVIL_BIN

pytestmark = pytest.mark.slow


@pytest.fixture
def chain() -> Iterator[tuple[Anvil, Marketplace]]:
    anvil = start_anvil(ANVIL_BIN)
    try:
        yield anvil, funded_market(connect(anvil.rpc_url), dev_signers(4))
    finally:
        anvil.stop()


def test_the_sdk_pays_with_market_token_once(chain: tuple[Anvil, Marketplace]):
    anvil, market = chain
    network = f"eip155:{market.w3.eth.chain_id}"
    token = market.deployment.token
    seller, payer = dev_signers(4)[1].address, dev_signers(4)[2].address
    offer = PaymentRequirements(
        scheme="exact",
        network=network,
        asset=token,
        amount="1000",
        pay_to=seller,
        max_timeout_seconds=60,
        extra={"name": "ModelMarket Token", "version": "1"},  # the token's EIP-712 domain
    )
    client = x402ClientSync()
    client.register("eip155:*", ExactEvmScheme(Account.from_key(dev_key(2))))
    # the SDK pays only assets it knows; a test token is allowed by configuration
    client.set_spend_controls({"allowed_assets": [{"network": network, "asset": token}]})
    payment = client.create_payment_payload(
        PaymentRequired(
            accepts=[offer], resource=ResourceInfo(url="http://127.0.0.1/v2/models/1/infer")
        )
    )
    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(
        facilitator, FacilitatorWeb3Signer(dev_key(3), anvil.rpc_url), networks=network
    )
    before = market.token_balance(seller), market.token_balance(payer)

    verified = facilitator.verify(payment, offer)
    assert verified.is_valid, verified.invalid_reason
    settled = facilitator.settle(payment, offer)
    assert settled.success, settled.error_reason
    receipt = market.w3.eth.get_transaction_receipt(settled.transaction)  # type: ignore[arg-type]
    assert receipt["status"] == 1
    assert market.token_balance(seller) == before[0] + 1000
    assert market.token_balance(payer) == before[1] - 1000

    # the same payment again: the token refuses the used nonce, nothing moves (the SDK's
    # facilitator sends the doomed transaction anyway: our gateway must reserve nonces
    # itself before it settles)
    again = facilitator.settle(payment, offer)
    assert not again.success
    assert market.token_balance(seller) == before[0] + 1000
    assert market.token_balance(payer) == before[1] - 1000
