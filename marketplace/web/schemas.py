"""The bodies of both API families as pydantic models: what each route takes and what
it answers, for the OpenAPI document (web/openapi.py) and for the routes that
parse a request with them. Responses are built by the routes as plain dicts; these
models describe them (a schema-driven test checks the two agree)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from marketplace.accounts import siwe
from marketplace.payments.prepaid import ledger
from marketplace.payments.prepaid.redeem import TX_HASH

UINT256_MAX = 2**256 - 1
Uint256Text = Annotated[str, Field(pattern=r"^[0-9]{1,78}$", description="a uint256, in decimal")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="an Ethereum address")]

# ---------------------------------------------------------------- /api/v1 errors


class ApiError(BaseModel):
    """Every /api/v1 error."""

    error: str = Field(description="a stable code, e.g. bad_request, unauthenticated")
    message: str = Field(description="what went wrong, for people")


# ------------------------------------------------------------- /api/v1 requests


class VerifyBody(BaseModel):
    message: str = Field(
        description="The EIP-4361 message the wallet signed", max_length=siwe.MAX_MESSAGE_CHARS
    )
    signature: str = Field(
        description="0x-prefixed 65-byte signature",
        max_length=siwe.MAX_SIGNATURE_CHARS,
        pattern=siwe.SIGNATURE.pattern,
    )
    key_name: str = Field(default="default", max_length=100)


class KeyBody(BaseModel):
    name: str = Field(default="default", max_length=100)


class ReceiptBody(BaseModel):
    tx_hash: str = Field(description="The purchase transaction's hash", pattern=TX_HASH.pattern)


class PurchaseBody(BaseModel):
    calls: int = Field(gt=0, le=ledger.MAX_CREDITED_CALLS)  # the contract's cap too
    buyer: Address | None = Field(default=None, description="for permit typed data")
    deadline: int | None = Field(
        default=None, ge=0, le=UINT256_MAX, description="for permit typed data (unix seconds)"
    )


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def absent(**kwargs: Any) -> Any:
    """The field of a query parameter or a header, which is given or absent, never null:
    typed `X | SkipJsonSchema[None]`, the document shows neither null nor a null default."""
    return Field(default=None, json_schema_extra=_no_default, **kwargs)


Price = Annotated[int, Field(ge=0, le=UINT256_MAX)]


class ModelQuery(BaseModel):
    q: str | SkipJsonSchema[None] = absent(max_length=100)
    tag: str | SkipJsonSchema[None] = absent(max_length=50)
    min_price: Price | SkipJsonSchema[None] = absent()
    max_price: Price | SkipJsonSchema[None] = absent()
    sort: str = Field(default="newest", pattern="^(newest|price_asc|price_desc|name)$")
    page: int = Field(default=1, ge=1, le=2**31 - 1)
    per_page: int = Field(default=20, ge=1, le=100)


# ------------------------------------------------------------ /api/v1 responses


class DeploymentInfo(BaseModel):
    chain_id: int
    marketplace: Address
    token: Address
    start_block: int


class Nonce(BaseModel):
    nonce: str = Field(description="single use, valid 10 minutes")
    domain: str = Field(description="the domain a sign-in message must name")
    uri: str = Field(description="the URI a sign-in message must name")
    chain_id: int = Field(description="the chain a sign-in message must name")


class NewKey(BaseModel):
    address: Address
    key_id: str
    api_key: str = Field(description="`mm_<id>_<secret>`; shown once")


class KeyInfo(BaseModel):
    key_id: str
    name: str
    created_at: datetime
    revoked: bool


class RevokedKey(BaseModel):
    key_id: str
    revoked: bool


class ListingInfo(BaseModel):
    """A listing and its model card (the card's text is untrusted: render it as text)."""

    model_id: int
    seller: Address
    model_cid: str
    metadata_cid: str
    token: Address
    price_per_call: Uint256Text
    active: bool
    name: str | None
    description: str | None
    license: str | None
    tags: list[str]
    card_status: str
    card_error: str | None
    card_flags: list[str]
    model_status: str = Field(description="ok (offered), pending, unavailable, or a refusal")
    model_error: str | None
    offered: bool
    listed_block: int
    supersedes: int | None = Field(description="the earlier version this listing replaces")
    anchored_calls: int = Field(
        description="paid calls whose usage receipts are anchored on-chain (`modelmarket"
        " verify` checks each); counted every 30 s"
    )
    versions: list[int] = Field(
        default_factory=list,
        description="every version of this model, newest first (on a single listing)",
    )


class SellerListingInfo(ListingInfo):
    calls_sold: int = Field(description="calls sold on-chain: purchases and x402 calls")
    calls_served: int = Field(description="paid calls the gateway served")


class ModelPage(BaseModel):
    total: int
    page: int
    per_page: int
    models: list[ListingInfo]


class Call(BaseModel):
    to: Address
    data: str = Field(description="0x-prefixed calldata")


class PermitDomain(BaseModel):
    name: str
    version: str
    chainId: int  # EIP-712's own names
    verifyingContract: Address


class PermitMessage(BaseModel):
    owner: Address
    spender: Address
    value: Uint256Text
    nonce: Uint256Text
    deadline: Uint256Text


class PermitTypedData(BaseModel):
    """EIP-2612 Permit as EIP-712 typed data, for `eth_signTypedData_v4`."""

    types: dict[str, list[dict[str, str]]]
    primaryType: Literal["Permit"]
    domain: PermitDomain
    message: PermitMessage


class PurchasePlan(BaseModel):
    chain_id: int
    total: Uint256Text
    approve: Call
    purchase: Call
    permit: PermitTypedData | None = Field(
        default=None, description="given a buyer and a deadline: typed data for a permit"
    )


class CreditedCalls(BaseModel):
    model_id: int
    calls: int
    remaining: int


class Credited(BaseModel):
    credited: list[CreditedCalls]


class CreditInfo(BaseModel):
    model_id: int
    remaining: int
    purchased: int


class OpenApiDocument(BaseModel):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


# ------------------------------------------------------- /api/v1 usage receipts

Hex32 = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$", description="32 bytes, 0x hex")]


class BatchInfo(BaseModel):
    id: int
    gateway: Address
    root: Hex32 | None
    receipts: int
    first_sequence: int | None
    last_sequence: int | None
    state: Literal["built", "anchored"]
    tx_hash: str | None = Field(description="the anchoring transaction (null until anchored)")
    block_number: int | None
    anchored_at: float | None = Field(description="unix seconds the gateway saw it mined")


class BatchPage(BaseModel):
    gateway: Address
    batches: list[BatchInfo]


class ReceiptProof(BaseModel):
    inference_id: str
    anchored: bool = Field(description="whether the receipt's batch root is on-chain")
    batch: BatchInfo | None = Field(description="null until the receipt's batch is built")
    leaf: Hex32
    proof: list[Hex32] = Field(description="siblings from the leaf up (OpenZeppelin layout)")


class UsageReceiptInfo(ReceiptProof):
    receipt: dict[str, Any] = Field(description="the receipt as EIP-712 typed data")


class ProofQuery(BaseModel):
    leaf: Hex32 = Field(description="the receipt's leaf (keccak256(keccak256(its EIP-712 digest)))")


class BatchQuery(BaseModel):
    gateway: Address | None = Field(default=None, description="default: this gateway")
    before: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="batches older than this id"
    )
    limit: int = Field(default=50, ge=1, le=500)
