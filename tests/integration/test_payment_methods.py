"""The payment interface: a method added in one module plus one registration line is
offered in every 402 beside prepaid credits, pays for calls through the same pipeline
(id minted, usage row written, its headers on the answer), and gets a failed call back.
Prepaid credits still work beside it."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from inference import codecs
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Usage
from tests.support.trial_method import HEADER, FreeTrial
from tests.support.world import World, buy, infer, sign_in

TRIER = "0x" + "7e" * 20


def trial_infer(world: World, features: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    rows = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32) if features is None else features
    body, headers = codecs.encode_request({"features": rows})
    return world.client.post(
        f"/v2/models/{world.model_id}/infer", data=body, headers={**headers, HEADER: TRIER}
    )


def usage_rows(world: World) -> list[tuple[str, str, bool, bool]]:
    with session_factory(make_engine(world.settings.db_url))() as s:
        rows = s.execute(
            select(Usage.buyer, Usage.status, Usage.charged, Usage.refunded).order_by(
                Usage.created_at
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_a_registered_method_is_offered_and_pays_for_calls(world):
    gateway = world.client.application.extensions["modelmarket"]
    gateway.payments.register(FreeTrial(gateway.engine, calls=2))  # the one line

    # a buyer with no credits is offered every way to pay, in registration order
    key = sign_in(world, 2)
    refused = infer(world, key)
    assert refused.status_code == 402
    offers = refused.get_json()["accepts"]
    assert [o["scheme"] for o in offers] == ["prepaid-credits", "exact", "free-trial"]
    assert offers[2] == {"scheme": "free-trial", "calls": 2, "header": HEADER}

    # the trial pays for a call through the pipeline: the model ran, with its headers
    first = trial_infer(world)
    assert first.status_code == 200, first.get_json()
    assert first.headers["X-Trial-Calls-Remaining"] == "1"
    assert len(first.headers["X-Inference-Id"]) == 32
    assert first.headers["X-Model-CID"]
    assert "X-Credits-Remaining" not in first.headers

    # a call that fails after the payment began is given back
    wrong = trial_infer(world, np.zeros((1, 3), np.float32))  # iris takes 4 features
    assert wrong.status_code == 400
    assert wrong.headers["X-Trial-Calls-Remaining"] == "1"
    assert wrong.headers["X-Inference-Id"] != first.headers["X-Inference-Id"]

    assert trial_infer(world).status_code == 200
    spent = trial_infer(world)
    assert spent.status_code == 402
    assert "free calls are used" in spent.get_json()["error"]
    schemes = [o["scheme"] for o in spent.get_json()["accepts"]]
    assert schemes == ["prepaid-credits", "exact", "free-trial"]

    assert usage_rows(world) == [
        (TRIER, "ok", False, False),
        (TRIER, "failed", False, True),
        (TRIER, "ok", False, False),
    ]

    # prepaid credits are untouched by the new method
    tx = buy(world, 2, 3)
    assert (
        world.client.post(
            "/api/v1/receipts", json={"tx_hash": tx}, headers={"Authorization": f"Bearer {key}"}
        ).status_code
        == 201
    )
    paid = infer(world, key)
    assert paid.status_code == 200
    assert paid.headers["X-Credits-Remaining"] == "2"
