"""x402 version 2 on the wire, through the official SDK's models and codecs: the
PAYMENT-REQUIRED header of a 402, the payment a client sends back (PAYMENT-SIGNATURE,
or X-PAYMENT from version 1 clients), and the PAYMENT-RESPONSE of a settled call."""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from eth_utils.address import is_address, to_checksum_address
from hexbytes import HexBytes
from pydantic import ValidationError
from x402 import PaymentRequired, PaymentRequirements, ResourceInfo
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    declare_payment_identifier_extension,
    extract_payment_identifier,
    is_valid_payment_id,
)
from x402.http.utils import (
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
)
from x402.schemas import SettleResponse

from marketplace import errors
from marketplace.chain.per_call import Authorization, SignedSettlement

PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
X_PAYMENT = "X-PAYMENT"  # version 1 clients
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
# what a browser's script may read of an answer (CORS hides other headers)
EXPOSED = f"{PAYMENT_REQUIRED}, {PAYMENT_RESPONSE}, X-Inference-Id, X-Credits-Remaining"
MAX_HEADER = 8192  # a payment is ~1 KB of base64; anything far larger is not one


@dataclass(frozen=True)
class SignedPayment:
    """A client's x402 payment, decoded: the offer it accepted (version 2; version 1
    names only the scheme and network), the authorization, and its payment id."""

    version: int
    scheme: str
    network: str
    accepted: dict[str, Any]
    authorization: Authorization
    payment_id: str | None
    resource_path: str | None = None  # the path of the resource it says it pays for


def payment_required_header(url: str, error: str, accepts: list[dict[str, object]]) -> str:
    """The base64 PAYMENT-REQUIRED header of a 402 for `url` with these offers. Only
    offers that carry every field x402 requires go in (an SDK client rejects the whole
    header over one that does not); the body's `accepts` lists them all."""
    valid = []
    for offer in accepts:
        try:
            valid.append(PaymentRequirements.model_validate(offer))
        except ValidationError:
            continue
    required = PaymentRequired(
        error=error,
        resource=ResourceInfo(url=url, mime_type="application/json"),
        accepts=valid,
        extensions={PAYMENT_IDENTIFIER: declare_payment_identifier_extension()},
    )
    return encode_payment_required_header(required)


def payment_response_header(
    *, success: bool, transaction: str, network: str, payer: str, reason: str | None = None
) -> str:
    """The base64 PAYMENT-RESPONSE header: how the settlement went."""
    return encode_payment_response_header(
        SettleResponse(
            success=success,
            transaction=transaction,
            network=network,
            payer=to_checksum_address(payer),
            error_reason=reason,
        )
    )


def read_payment(value: str) -> SignedPayment:
    """Decode a PAYMENT-SIGNATURE (or X-PAYMENT) header; PaymentInvalid when it is not
    an `exact` EVM payment we can read."""
    if len(value) > MAX_HEADER:
        raise _invalid("the payment header is too large")
    try:
        payload = decode_payment_signature_header(value)
    except (ValueError, binascii.Error, json.JSONDecodeError, ValidationError, UnicodeError):
        raise _invalid("the payment header is not base64 JSON of an x402 payment") from None
    resource_path = None
    if payload.x402_version == 1:
        scheme, network = payload.scheme, payload.network  # type: ignore[union-attr]
        accepted: dict[str, Any] = {}
        payment_id = None
    else:
        resource = payload.resource  # type: ignore[union-attr]
        if resource is not None and resource.url:
            resource_path = urlsplit(resource.url).path
        accepted = payload.accepted.model_dump(by_alias=True)  # type: ignore[union-attr]
        scheme, network = accepted["scheme"], accepted["network"]
        try:
            payment_id = extract_payment_identifier(payload, validate=False)  # type: ignore[arg-type]
        except Exception:
            raise _invalid("the payment-identifier extension is malformed") from None
    if payment_id is not None and not is_valid_payment_id(payment_id):
        raise _invalid("the payment id must be 16 to 128 letters, digits, '-' or '_'")
    return SignedPayment(
        payload.x402_version,
        str(scheme),
        str(network),
        accepted,
        _authorization(payload.payload),
        payment_id,
        resource_path,
    )


def pending_error(signed: SignedSettlement | None) -> errors.SettlementPending:
    """The 504 for a settlement sent and not seen mined: never a 402."""
    tx = f" (transaction {signed.tx_hash})" if signed and signed.tx_hash else ""
    exc = errors.SettlementPending(
        f"the payment's settlement was sent{tx} and is not mined yet: it will be charged at"
        " most once; send the same request with the same payment again for its answer"
    )
    exc.headers = {"Retry-After": "5"}
    return exc


def already_answered(tx: str) -> errors.PaymentAlreadyUsed:
    """The 409 for a payment whose one answer was given."""
    return errors.PaymentAlreadyUsed(
        f"this payment already paid for a call that was answered (transaction {tx});"
        " it is not charged again"
    )


def _authorization(body: Any) -> Authorization:
    try:
        auth, signature = body["authorization"], body["signature"]
        payer, to = auth["from"], auth["to"]
        if not (is_address(payer) and is_address(to)):
            raise ValueError("an address")
        nonce = HexBytes(auth["nonce"])
        if len(nonce) != 32:
            raise ValueError("the nonce")
        values = [int(auth[k]) for k in ("value", "validAfter", "validBefore")]
        if any(v < 0 or v >= 1 << 256 for v in values):
            raise ValueError("a uint256")
        return Authorization(
            to_checksum_address(payer),
            to_checksum_address(to),
            values[0],
            values[1],
            values[2],
            bytes(nonce),
            bytes(HexBytes(signature)),
        )
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise _invalid(
            "the payment is not an EIP-3009 authorization (from, to, value, validAfter,"
            " validBefore, a 32-byte nonce) with its signature"
        ) from None


def _invalid(message: str) -> errors.PaymentInvalid:
    return errors.PaymentInvalid(message, [])
