"""The marketplace JSON API, `/api/v1/...`."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from marketplace import chain
from marketplace.config import Settings

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


@blueprint.get("/deployment")
def deployment() -> ResponseReturnValue:
    """Chain id and contract addresses, for wallets and clients."""
    settings: Settings = current_app.config["SETTINGS"]
    record = chain.Deployment.load(settings.deployment_path)
    return jsonify(
        chain_id=record.chain_id,
        marketplace=record.marketplace,
        token=record.token,
        start_block=record.start_block,
    )
