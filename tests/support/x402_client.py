"""x402 payments as a client makes them: the official SDK (x402 2.25.0, unmodified),
allowed to pay the test token by configuration, and hand-made authorizations for the
cases no honest client sends (another key, a short amount, an expired window)."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from eth_account import Account
from x402 import PaymentRequired, x402ClientSync
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.mechanisms.evm.exact import ExactEvmScheme

from marketplace.chain.per_call import Authorization
from marketplace.devstack.anvil import dev_key


def sdk_client(key: str, network: str, token: str) -> x402ClientSync:
    """The SDK's client paying with `key`; the test token allowed by configuration."""
    client = x402ClientSync()
    client.register("eip155:*", ExactEvmScheme(Account.from_key(key)))
    client.set_spend_controls({"allowed_assets": [{"network": network, "asset": token}]})
    return client


def required(response: Any) -> PaymentRequired:
    """A 402's PAYMENT-REQUIRED header, decoded by the SDK."""
    decoded = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    assert isinstance(decoded, PaymentRequired)
    return decoded


def exact_offer(response: Any) -> dict[str, Any]:
    """The `exact` offer of a 402 (as JSON)."""
    offers = [o for o in required(response).accepts if o.scheme == "exact"]
    assert len(offers) == 1, offers
    return offers[0].model_dump(by_alias=True)


def sdk_payment(who: int, response: Any) -> str:
    """The PAYMENT-SIGNATURE header the SDK's client makes for a 402, as dev account `who`."""
    need = required(response)
    offer = next(o for o in need.accepts if o.scheme == "exact")
    client = sdk_client(dev_key(who), offer.network, offer.asset)
    return encode_payment_signature_header(client.create_payment_payload(need))


def signed_payment(
    offer: dict[str, Any],
    payer_key: str,
    domain: tuple[str, str, int, str],
    *,
    signer_key: str | None = None,
    value: int | None = None,
    valid_after: int | None = None,
    valid_before: int | None = None,
    payment_id: str | None = None,
) -> str:
    """A PAYMENT-SIGNATURE header built by hand for `offer`, signed by `signer_key`
    (default: the payer's own), with any field changed."""
    payer = Account.from_key(payer_key).address
    now = int(time.time())
    auth = Authorization(
        payer,
        offer["payTo"],
        int(offer["amount"]) if value is None else value,
        now - 60 if valid_after is None else valid_after,
        now + 300 if valid_before is None else valid_before,
        os.urandom(32),
        b"",
    )
    signed = Account.sign_typed_data(signer_key or payer_key, full_message=auth.typed_data(domain))
    body: dict[str, Any] = {
        "x402Version": 2,
        "accepted": offer,
        "payload": {
            "signature": "0x" + bytes(signed.signature).hex(),
            "authorization": {
                "from": auth.payer,
                "to": auth.to,
                "value": str(auth.value),
                "validAfter": str(auth.valid_after),
                "validBefore": str(auth.valid_before),
                "nonce": "0x" + auth.nonce.hex(),
            },
        },
    }
    if payment_id is not None:
        body["extensions"] = {"payment-identifier": {"info": {"required": False, "id": payment_id}}}
    return base64.b64encode(json.dumps(body).encode()).decode()


def payment_response(response: Any) -> dict[str, Any]:
    """A PAYMENT-RESPONSE header, decoded."""
    return dict(json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"])))
