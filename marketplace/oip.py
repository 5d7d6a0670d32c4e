"""The pay-per-inference API: Open Inference Protocol v2 (KServe v2 / Triton HTTP) at /v2.

A paid call: authenticate the key -> find the listing -> decode the request (a bad body
costs nothing) -> take one credit -> the verified model from the cache -> onnxruntime ->
the response, with X-Credits-Remaining, X-Model-CID and X-Inference-Id. Any failure
after the credit was taken gives it back.
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from sqlalchemy import text

from inference import codecs
from marketplace import errors
from marketplace.api import current_gateway, json_response, require_key, the_listing
from marketplace.openapi import documented

blueprint = Blueprint("oip", __name__, url_prefix="/v2")


@blueprint.get("/health/live")
@documented(tags=["inference"])
def live() -> Response:
    """The server process is up."""
    return json_response({"live": True})


@blueprint.get("/health/ready")
@documented(tags=["inference"])
def ready() -> Response:
    """The server can take paid calls (its database answers)."""
    gateway = current_gateway()
    with gateway.sessions() as session:
        session.execute(text("SELECT 1"))
    return json_response({"ready": True})


def _loaded(model_id: int):  # type: ignore[no-untyped-def]
    gateway = current_gateway()
    listing = the_listing(model_id)
    path = gateway.cache.get(listing.model_cid)
    return listing, gateway.models.get(listing.model_cid, path)


@blueprint.get("/models/<int:model_id>")
@documented(tags=["inference"])
def metadata(model_id: int) -> Response:
    """Model metadata (inputs, outputs) from the ONNX signature."""
    _listing, model = _loaded(model_id)
    return json_response(codecs.model_metadata(str(model_id), model.info))


@blueprint.get("/models/<int:model_id>/ready")
@documented(tags=["inference"])
def model_ready(model_id: int) -> Response:
    """Whether the model is loaded and can serve."""
    _loaded(model_id)  # delisted models still serve buyers who hold credits
    return json_response({"name": str(model_id), "ready": True})


@blueprint.post("/models/<int:model_id>/infer")
@documented(tags=["inference"])
def infer(model_id: int) -> Response:
    """A paid inference call (JSON tensors, or the binary tensor extension)."""
    gateway = current_gateway()
    key = require_key(gateway)
    listing = the_listing(model_id, gateway)
    length = request.headers.get(codecs.HEADER_LENGTH)
    try:
        header_length = int(length) if length is not None else None
    except ValueError:
        raise errors.BadRequest(f"{codecs.HEADER_LENGTH} must be an integer") from None
    decoded = codecs.decode_request(
        request.get_data(), header_length, max_elements=gateway.settings.max_input_elements
    )
    payment = gateway.payments.begin(key, listing)
    try:
        path = gateway.cache.get(listing.model_cid)
        model = gateway.models.get(listing.model_cid, path)
        arrays = codecs.check_inputs(model.info, decoded)
        outputs = gateway.models.run(model, arrays, decoded.outputs or None)
        binary = decoded.binary_outputs or (set(outputs) if decoded.binary_by_default else None)
        body, headers = codecs.encode_response(
            str(model_id), outputs, request_id=decoded.id, binary=binary
        )
    except Exception as exc:
        left = gateway.payments.complete_after_error(payment, str(errors.describe(exc)[1]["error"]))
        exc.credits_remaining = left  # type: ignore[attr-defined]
        exc.inference_id = payment.inference_id  # type: ignore[attr-defined]
        raise
    gateway.payments.complete(payment)
    headers["X-Credits-Remaining"] = str(payment.remaining)
    headers["X-Model-CID"] = listing.model_cid
    headers["X-Inference-Id"] = payment.inference_id
    return Response(body, headers=headers)
