"""The pay-per-inference API: Open Inference Protocol v2 (KServe v2 / Triton HTTP) at /v2.

A paid call: who pays (the payment method the request names) -> find the listing ->
decode the request (a bad body costs nothing) -> the payment pipeline begins the payment
-> the verified model from the cache -> onnxruntime -> the response, with the method's
headers (X-Credits-Remaining), X-Model-CID and X-Inference-Id. Any failure after the
payment began gives it back.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, Response, request
from sqlalchemy.exc import OperationalError

from inference import codecs
from inference.digests import tensors_digest
from inference.errors import InputTooLarge
from inference.inspect import ModelInfo
from marketplace import errors
from marketplace.indexer.follow import health as indexer_health
from marketplace.payments.pipeline import Digests
from marketplace.payments.x402 import settlements
from marketplace.web.oip_schemas import (
    InferenceRequest,
    InferenceResponse,
    InferHeaders,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
)
from marketplace.web.openapi import PAID, TensorResponse, documented, inference_responses
from marketplace.web.requests import MODEL_ID, current_gateway, json_response, offered_listing

blueprint = Blueprint("oip", __name__, url_prefix="/v2")


@blueprint.get("/health/live")
@documented(resp=inference_responses(Live), tags=["inference"])
def live() -> Response:
    """The server process is up."""
    return json_response({"live": True})


@blueprint.get("/health/ready")
@documented(resp=inference_responses(Ready, 503), tags=["inference"])
def ready() -> Response:
    """Whether this replica can take paid calls (its database answers: 503 when not),
    and which of its dependencies are down: the chain (x402 settlements, receipts) and
    the content store (models not cached yet) each stop only part of the work. Also the
    in-process pieces (this worker's lease keeper, its x402 reconciler) and the indexer
    that feeds it (it runs elsewhere; its failures do not stop paid calls)."""
    gateway = current_gateway()
    deps = gateway.dependencies.status()
    body: dict[str, object] = {
        "ready": deps["database"].up,
        "dependencies": {name: status.as_dict() for name, status in deps.items()},
        "prepaid": gateway.prepaid.health(),
    }
    if not deps["database"].up:
        down = errors.DatabaseUnavailable("the database does not answer")
        wait = errors.retry_after(down.http_status, down.code)
        return json_response(
            {**errors.oip_body(down.to_dict()), **body},
            status=down.http_status,
            headers={"Retry-After": str(wait)},
        )
    try:
        with gateway.reads() as session:
            body["indexer"] = indexer_health(session, gateway.deployment)
            x402 = settlements.counts(session.connection())
    except OperationalError:
        raise errors.DatabaseUnavailable("the database does not answer") from None
    running = gateway.x402.reconciler.alive()
    x402["reconciler"] = (
        "off"
        if gateway.settings.settler_key is None
        # type: ignore[assignment]
        else ("running" if running else "stopped")
    )
    body["x402"] = x402
    return json_response(body)


@blueprint.get(f"/models/{MODEL_ID}")
@documented(resp=inference_responses(ModelMetadata, 404, 409, 503), tags=["inference"])
def metadata(model_id: int) -> Response:
    """Model metadata (inputs, outputs) from the signature the indexer stored: nothing
    is loaded for an unauthenticated request."""
    listing = offered_listing(model_id)
    return json_response(
        codecs.model_metadata(str(model_id), ModelInfo.from_dict(listing.signature or {}))
    )


@blueprint.get(f"/models/{MODEL_ID}/ready")
@documented(resp=inference_responses(ModelReady, 404, 409, 503), tags=["inference"])
def model_ready(model_id: int) -> Response:
    """Whether the model can serve paid calls (its model passed the indexer's checks)."""
    offered_listing(model_id)  # delisted models still serve buyers who hold credits
    return json_response({"name": str(model_id), "ready": True})


@blueprint.post(f"/models/{MODEL_ID}/infer")
@documented(
    json=InferenceRequest,
    headers=InferHeaders,
    resp=inference_responses(
        InferenceResponse, 400, 401, 402, 404, 409, 422, 502, 503, 504, 507, kind=TensorResponse
    ),
    security=PAID,
    tags=["inference"],
)
def infer(model_id: int) -> Response:
    """A paid inference call (JSON tensors, or the binary tensor extension)."""
    gateway = current_gateway()
    # who pays first: a request with a bad credential costs nothing past this line
    try:
        paying = gateway.payments.identify(request.headers)
    except errors.PaymentRequired as exc:  # an unreadable payment: say what would pay
        exc.accepts = gateway.payments.offers(offered_listing(model_id, gateway))
        raise
    listing = offered_listing(model_id, gateway)
    if paying is None:
        raise gateway.payments.unpaid(listing)
    method, payer = paying
    length = request.headers.get(codecs.HEADER_LENGTH)
    try:
        header_length = int(length) if length is not None else None
    except ValueError:
        raise errors.BadRequest(f"{codecs.HEADER_LENGTH} must be an integer") from None
    body = request.get_data()
    json_part = len(body) if header_length is None else header_length
    if json_part > gateway.settings.max_infer_json_bytes:
        # parsed before any payment: JSON costs ~100x what binary tensors do to decode
        raise InputTooLarge(
            f"the request's JSON is {json_part} bytes; the limit is"
            f" {gateway.settings.max_infer_json_bytes}: send large tensors with the binary"
            f" extension ({codecs.HEADER_LENGTH})"
        )
    decoded = codecs.decode_request(
        body, header_length, max_elements=gateway.settings.max_input_elements
    )
    if method.binds_request:
        payer = payer._replace(request=hashlib.sha256(body).digest())

    receipts = gateway.payments.issuer() is not None

    def run() -> tuple[tuple[bytes, dict[str, str]], Digests]:
        path = gateway.model_files.get(listing.model_cid)
        model = gateway.onnx_sessions.get(listing.model_cid, path, size_hint=listing.load_bytes)
        arrays = codecs.check_inputs(model.info, decoded)
        outputs = gateway.onnx_sessions.run(model, arrays, decoded.outputs or None)
        binary = decoded.binary_outputs or (set(outputs) if decoded.binary_by_default else None)
        answer = codecs.encode_response(
            str(model_id), outputs, request_id=decoded.id, binary=binary
        )
        return answer, (tensors_digest(arrays), tensors_digest(outputs)) if receipts else None

    (answer, headers), paid = gateway.payments.run(method, payer, listing, run)
    headers.update(paid)
    headers["X-Model-CID"] = listing.model_cid
    return Response(answer, headers=headers)
