"""The bodies of both API families as pydantic models: what each route takes and what
it answers, for the OpenAPI document (web/openapi.py) and for the routes that
parse a request with them. Responses are built by the routes as plain dicts; these
models describe them (a schema-driven test checks the two agree)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
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


# ------------------------------------------------------------------- /v2 errors


class OipError(BaseModel):
    """Every /v2 error: the Open Inference Protocol's `error`, plus our stable code."""

    error: str = Field(description="`[<code>] <what went wrong>`, what OIP clients show")
    code: str = Field(description="a stable code, e.g. bad_input, model_pending")


class ContractCall(BaseModel):
    to: Address
    function: str
    args: list[int | str]


class ThenPost(BaseModel):
    method: str
    path: str
    body: dict[str, Any]


class PaymentOption(BaseModel):
    """One way to pay: x402's fields, which every offer has (`exact`: pay this call
    with an EIP-3009 authorization); prepaid credits add how to buy them: approve and
    purchase on-chain, then post the receipt."""

    scheme: str = Field(description="exact (x402) or prepaid-credits")
    network: str = Field(description="eip155:<chain id>")
    amount: Uint256Text = Field(description="the price of one call, in smallest units")
    asset: Address
    pay_to: Address = Field(alias="payTo", description="the marketplace contract")
    max_timeout_seconds: int = Field(alias="maxTimeoutSeconds")
    extra: dict[str, Any] = Field(description="exact: the token's EIP-712 name and version")
    chain_id: int | SkipJsonSchema[None] = absent()
    marketplace: Address | SkipJsonSchema[None] = absent()
    model_id: int | SkipJsonSchema[None] = absent()
    token: Address | SkipJsonSchema[None] = absent()
    price_per_call: Uint256Text | SkipJsonSchema[None] = absent()
    calls: list[ContractCall] | SkipJsonSchema[None] = absent()
    then: ThenPost | SkipJsonSchema[None] = absent()
    prepare: str | SkipJsonSchema[None] = absent()


class OipPaymentRequired(OipError):
    accepts: list[PaymentOption]


# --------------------------------------------------------------- /v2 responses


class Live(BaseModel):
    live: bool


class IndexerHealth(BaseModel):
    status: str = Field(description="ok, failing or not_started")
    last_block: int | None = None
    seconds_since_pass: float | None = None
    failures: int | None = None
    last_error: str | None = None


class Ready(BaseModel):
    ready: bool
    indexer: IndexerHealth


class ModelReady(BaseModel):
    name: str
    ready: bool


Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class MetadataTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 where a dimension is not fixed")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


# ----------------------------------------------- /v2 inference (OIP v2 + binary)


class TensorParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_size: int | None = Field(
        default=None, ge=0, description="binary tensor extension: the tensor's bytes follow"
    )


class RequestInput(BaseModel):
    name: str = Field(min_length=1)
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Datatype
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(
        default=None, description="row-major values (flat or nested); absent when binary"
    )


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data: bool | None = Field(default=None, description="answer this output in binary")


class RequestOutput(BaseModel):
    name: str
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_output: bool | None = Field(
        default=None, description="answer every output in binary"
    )


class InferenceRequest(BaseModel):
    """Open Inference Protocol v2 inference request. With the binary tensor extension,
    this JSON is followed by the tensors' bytes and `Inference-Header-Content-Length`
    gives its length."""

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class InferHeaders(BaseModel):
    inference_header_content_length: Annotated[int, Field(ge=0)] | SkipJsonSchema[None] = absent(
        alias="Inference-Header-Content-Length",
        description="binary tensor extension: the length of the JSON before the tensors",
    )
    payment_signature: str | SkipJsonSchema[None] = absent(
        alias="PAYMENT-SIGNATURE", description="x402 v2: base64 payment for a 402 offer"
    )
    x_payment: str | SkipJsonSchema[None] = absent(alias="X-PAYMENT", description="x402 v1")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: TensorParameters | None = None
    data: list[bool | int | float | str | None] | None = Field(
        default=None,
        description="row-major values; null for a NaN or infinity; absent when binary",
    )


class InferenceResponse(BaseModel):
    """Open Inference Protocol v2 inference response."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]
