"""The pay-per-inference API: Open Inference Protocol v2 (KServe v2 / Triton HTTP) at /v2:
health, model metadata and readiness here, the paid call in `web.paid_route`."""

from __future__ import annotations

import time

from flask import Blueprint, Response, request
from sqlalchemy.exc import OperationalError

from inference import codecs
from inference.inspect import ModelInfo
from marketplace import errors
from marketplace.indexer.follow import health as indexer_health
from marketplace.payments.x402 import settlements
from marketplace.usage import batches
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
from marketplace.web.paid_route import paid_inference
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
    that feeds it (it runs elsewhere; its failures do not stop paid calls), and how far
    the gateway's usage receipts are from the chain (when it issues them)."""
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
    issuer = gateway.receipt_issuer()
    try:
        with gateway.reads() as session:
            body["indexer"] = indexer_health(session, gateway.deployment)
            x402 = settlements.counts(session.connection())
            if issuer is not None:
                anchorer = gateway.anchorer
                receipts = batches.backlog(
                    session,
                    issuer.gateway,
                    time.time(),
                    limit=min(anchorer.max_calls, 10_000),  # a probe reads no more
                    period=anchorer.period,
                    slack=anchorer.stale_after,  # how long one anchoring send may take
                )
                receipts["anchorer"] = "running" if anchorer.alive() else "stopped"
                body["receipts"] = receipts
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
    # `paid_route.PaidRoute` answers this route in front of Flask; this view documents
    # it and answers where the app is served without that middleware
    body, headers = paid_inference(current_gateway(), model_id, request.headers, request.get_data)
    return Response(body, headers=headers)
