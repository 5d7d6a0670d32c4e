"""The bodies of the Open Inference Protocol family (/v2) as pydantic models: its
error shapes (with the 402's payment offers), health and metadata answers, and the
inference request and response (JSON and the binary tensor extension). The /api/v1
family's are in schemas.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from marketplace.web.schemas import Address, Uint256Text, absent

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
    leader: str | None = Field(default=None, description="host:pid of the last pass's indexer")


class X402Health(BaseModel):
    reconciler: str = Field(description="running, stopped (this worker), or off (no settler)")
    reserved: int = Field(description="authorizations reserved by calls in flight")
    sending: int = Field(description="settlements sent and not yet seen mined")
    failed: int = Field(description="settlements that failed (nothing moved)")


class DependencyHealth(BaseModel):
    status: Literal["up", "down"]
    error: str | None = Field(default=None, description="the stable code of why it is down")
    message: str | None = None


class PrepaidHealth(BaseModel):
    keeper: str = Field(description="running, stopped (it died), or idle (no prepaid call yet)")
    unwritten: int = Field(description="calls this worker finished and has not written yet")
    failing_since: float | None = Field(
        default=None, description="unix time since writing calls fails (the database is down)"
    )


class ReceiptsHealth(BaseModel):
    status: str = Field(
        description="ok, or behind: a receipt has waited over two anchor periods and the"
        " anchoring slack (MODELMARKET_TX_TIMEOUT + 30 s) for its batch, or a batch over that"
        " slack for its anchor"
    )
    unbatched: int = Field(
        description="receipts in no closed batch yet, counted up to a batch's size"
    )
    oldest_unbatched_seconds: float | None = Field(
        default=None, description="age of the oldest receipt among the next batch's"
    )
    unanchored_batches: int = Field(description="batches built and not anchored yet")
    oldest_unanchored_batch_seconds: float | None = Field(
        default=None, description="how long the oldest of those has waited for its anchor"
    )
    builder: str | None = Field(
        default=None, description="who has the turn to build batches (indexer:... or worker:...)"
    )
    anchorer: str = Field(description="this worker's anchoring thread: running or stopped")


class Ready(BaseModel):
    ready: bool
    dependencies: dict[str, DependencyHealth] = Field(
        description="database, chain (JSON-RPC) and store (IPFS node or embedded store)"
    )
    prepaid: PrepaidHealth
    indexer: IndexerHealth | None = None
    x402: X402Health | None = None
    receipts: ReceiptsHealth | None = Field(
        default=None, description="absent when the gateway issues no receipts"
    )


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
