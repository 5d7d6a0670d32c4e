"""The audit trail's API, `/api/v1/usage/...` and `/api/v1/batches`: a call's usage
receipt with its inclusion proof (the receipt to its buyer; the proof to anyone, it
holds only hashes) and a gateway's anchored batches. What they claim is checked against
the chain, not against this API (`modelmarket verify`)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, request

from marketplace import errors
from marketplace.db.tables import ReceiptBatch
from marketplace.usage import proofs
from marketplace.usage.proofs import to_receipt
from marketplace.usage.receipts import Domain, to_json
from marketplace.web.openapi import BEARER, documented, marketplace_responses
from marketplace.web.requests import current_gateway, json_response, require_key, validated
from marketplace.web.schemas import (
    BatchPage,
    BatchQuery,
    ProofQuery,
    ReceiptProof,
    UsageReceiptInfo,
)

blueprint = Blueprint("audit", __name__, url_prefix="/api/v1")
INFERENCE_ID = re.compile(r"[0-9a-f]{1,32}")


def batch_json(batch: ReceiptBatch) -> dict[str, Any]:
    """A batch as the API shows it."""
    return {
        "id": batch.id,
        "gateway": batch.gateway,
        "root": batch.root,
        "receipts": batch.count,
        "first_sequence": batch.first_sequence,
        "last_sequence": batch.last_sequence,
        "state": batch.state,
        "tx_hash": batch.tx_hash,
        "block_number": batch.block_number,
        "anchored_at": batch.anchored_at,
    }


def _proof_of(
    inference_id: str, *, buyer: str | None = None, leaf: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the receipt as typed data, its proof document); 404 when there is none, or when
    the caller is not its buyer (`buyer`) or does not hold it (`leaf`): not told apart."""
    gateway = current_gateway()
    if not INFERENCE_ID.fullmatch(inference_id) or gateway.receipt_issuer() is None:
        raise errors.NotFound(f"no usage receipt {inference_id[:40]!r} on this gateway")
    domain: Domain = gateway.receipt_domain()
    with gateway.reads() as s:
        row = proofs.receipt_row(s, inference_id)
        missing = errors.NotFound(f"no usage receipt {inference_id!r} on this gateway")
        if row is None:
            raise missing
        receipt = to_receipt(row)
        own_leaf = "0x" + receipt.leaf(domain).hex()
        if (buyer is not None and row.buyer != buyer) or (
            leaf is not None and leaf.lower() != own_leaf
        ):
            raise missing
        batch = proofs.batch_row(s, row)
        if batch is not None and batch.root is None:  # still open, or its root not computed
            batch = None
        proof = proofs.proof(s, batch, inference_id, domain) if batch is not None else []
        doc = {
            "inference_id": inference_id,
            "anchored": batch is not None and batch.state == "anchored",
            "batch": batch_json(batch) if batch is not None else None,
            "leaf": own_leaf,
            "proof": ["0x" + p.hex() for p in proof],
        }
    return to_json(receipt, domain), doc


@blueprint.get("/usage/<inference_id>")
@documented(
    resp=marketplace_responses({200: UsageReceiptInfo}, 401, 404),
    security=BEARER,
    tags=["audit"],
)
def usage_receipt(inference_id: str) -> Response:
    """A paid call's usage receipt, with its inclusion proof once its batch is built
    (for the call's buyer: an API key of the paying address)."""
    key = require_key()
    receipt, doc = _proof_of(inference_id, buyer=key.address)
    return json_response({**doc, "receipt": receipt})


@blueprint.get("/usage/<inference_id>/proof")
@documented(
    query=ProofQuery, resp=marketplace_responses({200: ReceiptProof}, 400, 404), tags=["audit"]
)
def usage_proof(inference_id: str) -> Response:
    """A receipt's inclusion proof and batch, for whoever holds the receipt an answer
    carried in X-Usage-Receipt: `leaf` (its leaf, computed from it) proves that; ids are
    guessable, leaves are not, so no one else learns whether a call was made."""
    q = validated(ProofQuery, request.args.to_dict())
    _receipt, doc = _proof_of(inference_id, leaf=q.leaf)
    return json_response(doc)


@blueprint.get("/batches")
@documented(query=BatchQuery, resp=marketplace_responses({200: BatchPage}, 400), tags=["audit"])
def anchored_batches() -> Response:
    """A gateway's anchored receipt batches, newest first."""
    q = validated(BatchQuery, request.args.to_dict())
    gateway = current_gateway()
    identity = gateway.identity.address.lower() if gateway.identity is not None else None
    who = (q.gateway or identity or "").lower()
    if not who:
        raise errors.BadRequest("gateway: this gateway anchors nothing; name one")
    with gateway.reads() as s:
        found = proofs.batches(s, who, limit=q.limit, before=q.before)
        body = {"gateway": who, "batches": [batch_json(b) for b in found]}
    return json_response(body)
