"""The paid call is answered as plain WSGI in front of Flask (`web.paid_route`): what a
caller sees must not change. Under the granian we ship: the headers every answer
carries, on answers and on errors; the body bound, declared or chunked; a body cut short;
none of those costs a call. In-process: the Flask view that documents the route answers
as the route does, and what the route does not take still reaches Flask."""

from __future__ import annotations

import socket
import struct
from urllib.parse import urlsplit

import numpy as np
import requests
from sqlalchemy import func, select
from werkzeug.test import Client

from app import create_app
from inference import codecs
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Usage
from marketplace.payments.prepaid import ledger
from marketplace.web import headers as answer_headers
from tests.support.replicas import serve
from tests.support.world import World, buy, sign_in

LIMIT = 4096  # MODELMARKET_MAX_INFER_BODY_BYTES for the replica


def _request() -> tuple[bytes, dict[str, str]]:
    return codecs.encode_request({"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)})


def _carries_every_answer_header(headers: requests.structures.CaseInsensitiveDict[str]) -> None:
    for name, value in answer_headers.INFERENCE_ANSWER.items():
        assert headers.get(name) == value, name


def test_the_paid_route_keeps_its_headers_and_bounds_and_refusals_cost_nothing(
    world: World, tmp_path
):
    database = f"sqlite:///{tmp_path / 'gateway.db'}"
    server, key, buyer, log = serve(
        world, database, tmp_path, 10, MODELMARKET_MAX_INFER_BODY_BYTES=str(LIMIT)
    )
    try:
        url = f"{server.url}/v2/models/{world.model_id}/infer"
        body, headers = _request()
        auth = {"Authorization": f"Bearer {key}"}

        served = requests.post(url, data=body, headers={**headers, **auth}, timeout=30)
        assert served.status_code == 200, served.text
        assert "X-Credits-Remaining" in served.headers and served.headers["X-Inference-Id"]
        assert served.headers["Content-Type"] == "application/json"
        assert int(served.headers["Content-Length"]) == len(served.content)
        assert served.json()["outputs"]
        _carries_every_answer_header(served.headers)
        # the same headers Flask puts on its own /v2 answers
        live = requests.get(f"{server.url}/v2/health/live", timeout=10)
        for name in answer_headers.INFERENCE_ANSWER:
            assert live.headers[name] == served.headers[name]

        unpaid = requests.post(url, data=body, headers=headers, timeout=30)
        assert unpaid.status_code == 402 and unpaid.json()["code"] == "payment_required"
        assert unpaid.headers["PAYMENT-REQUIRED"]  # x402's header, naming this URL's resource
        _carries_every_answer_header(unpaid.headers)

        declared = requests.post(url, data=b"x" * (LIMIT + 1), headers=auth, timeout=30)
        assert declared.status_code == 413, declared.text
        assert declared.json()["code"] == "request_entity_too_large"
        _carries_every_answer_header(declared.headers)

        # a generator body goes chunked (no Content-Length): bounded all the same
        chunked = requests.post(
            url, data=iter([b"x" * 3000, b"x" * 3000]), headers=auth, timeout=30
        )
        assert chunked.status_code == 413, chunked.text
        assert chunked.json()["code"] == "request_entity_too_large"
        small = requests.post(
            url, data=iter([body[:10], body[10:]]), headers={**headers, **auth}, timeout=30
        )
        assert small.status_code == 200, small.text

        # a client that stops sending before the length it declared
        address = urlsplit(server.url)
        with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
            head = (
                f"POST /v2/models/{world.model_id}/infer HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body) + 100}\r\nConnection: close\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]

        # a client that resets the connection mid-body (and one that cuts a chunk): a
        # failed read is the client's doing, never an "unexpected error" of ours
        for framing in (f"Content-Length: {len(body) + 100}", "Transfer-Encoding: chunked"):
            with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
                head = (
                    f"POST /v2/models/{world.model_id}/infer HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {key}\r\n{framing}\r\n\r\n"
                )
                partial = body[:20] if "Length" in framing else b"400\r\n" + body[:20]
                sock.sendall(head.encode() + partial)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert requests.get(f"{server.url}/v2/health/live", timeout=10).ok

    finally:
        server.stop()  # graceful: the workers write their calls and give leases back
    assert "unexpected error" not in log.read_text()
    # none of the refusals cost a call: 2 served of 10
    sessions = session_factory(make_engine(database))
    with sessions() as s:
        assert ledger.remaining(s, buyer, world.model_id) == 8
        assert s.scalar(select(func.count()).select_from(Usage)) == 2


def test_the_documented_flask_view_answers_as_the_paid_route_does(world: World):
    key = sign_in(world, 2)
    auth = {"Authorization": f"Bearer {key}"}
    world.client.post("/api/v1/receipts", json={"tx_hash": buy(world, 2, 2)}, headers=auth)
    app = create_app(world.settings)
    route = Client(app)  # through web.paid_route, as every server serves the app
    view = Client(app.wsgi_app.app)  # type: ignore[attr-defined]  # Flask alone
    path = f"/v2/models/{world.model_id}/infer"
    body, headers = _request()
    answers = [c.post(path, data=body, headers={**headers, **auth}) for c in (route, view)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json["outputs"] == answers[1].json["outputs"]  # type: ignore[index]
    assert [a.headers["X-Credits-Remaining"] for a in answers] == ["1", "0"]
    for a in answers:
        for name, value in answer_headers.INFERENCE_ANSWER.items():
            assert a.headers[name] == value
    refused = [c.post(path, data=body, headers={**headers, **auth}) for c in (route, view)]
    assert [r.status_code for r in refused] == [402, 402]
    assert refused[0].json == refused[1].json
    assert refused[0].headers["PAYMENT-REQUIRED"] == refused[1].headers["PAYMENT-REQUIRED"]
    # what the route does not take still reaches Flask: another method, an id past 64
    # bits, a trailing slash
    assert route.get(path).status_code == 405
    assert route.post(f"/v2/models/{2**63}/infer", data=body).status_code == 404
    assert route.post(f"{path}/", data=body, headers=auth).status_code in (404, 405, 308)
