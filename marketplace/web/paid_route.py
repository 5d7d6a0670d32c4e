"""The paid call, POST /v2/models/{id}/infer, answered as plain WSGI in front of Flask.

A paid call: who pays (the payment method the request names) -> find the listing ->
decode the request (a bad body costs nothing) -> the payment pipeline begins the payment
-> the verified model from the cache -> onnxruntime -> the response, with the method's
headers (X-Credits-Remaining), X-Model-CID and X-Inference-Id. Any failure after the
payment began gives it back.

Why outside Flask: under load, Flask's request context, router, hooks and Response
object cost a paid call more CPU than its payment does (bench.profile: ~250 us against
~110 us for key check, lease spend, usage row, metrics and receipt). `PaidRoute` takes
only this one route's POSTs and hands everything else to Flask; the route keeps what
Flask gave it: the body bound (413), the headers every answer carries, the one error
mapping (`web.errors.error_answer`), each worker's background threads started. The Flask
view in `web.oip` runs the same `paid_inference` (and documents the route).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wsgi import get_current_url

from inference import codecs
from inference.digests import tensors_digest
from inference.errors import InputTooLarge
from marketplace import errors
from marketplace.payments.method import Headers
from marketplace.payments.pipeline import Digests
from marketplace.web import headers as answer_headers
from marketplace.web.errors import error_answer
from marketplace.web.gateway import Gateway
from marketplace.web.requests import offered_listing

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

INFER = re.compile(r"/v2/models/([0-9]{1,19})/infer")
MAX_MODEL_ID = 2**63 - 1  # the database's 64 signed bits; larger is no listing (Flask 404s)
STATUS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_INTERNAL = orjson.dumps(
    errors.oip_body({"error": "internal_error", "message": "an unexpected error; it was logged"})
)

log = logging.getLogger("modelmarket")


def paid_inference(
    gateway: Gateway, model_id: int, headers: Headers, read_body: Callable[[], bytes]
) -> tuple[bytes, dict[str, str]]:
    """One paid call: the answer's body and headers. The body is read only once the
    payer is known (a request with a bad credential costs nothing past that)."""
    try:
        paying = gateway.payments.identify(headers)
    except errors.PaymentRequired as exc:  # an unreadable payment: say what would pay
        exc.accepts = gateway.payments.offers(offered_listing(model_id, gateway))
        raise
    listing = offered_listing(model_id, gateway)
    if paying is None:
        raise gateway.payments.unpaid(listing)
    method, payer = paying
    length = headers.get(codecs.HEADER_LENGTH)
    try:
        header_length = int(length) if length is not None else None
    except ValueError:
        raise errors.BadRequest(f"{codecs.HEADER_LENGTH} must be an integer") from None
    body = read_body()
    json_part = len(body) if header_length is None else header_length
    limit = gateway.settings.max_infer_json_bytes
    if json_part > limit:
        # parsed before any payment: JSON costs ~100x what binary tensors do to decode
        raise InputTooLarge(
            f"the request's JSON is {json_part} bytes; the limit is {limit}: send large"
            f" tensors with the binary extension ({codecs.HEADER_LENGTH})"
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

    (answer, out), paid = gateway.payments.run(method, payer, listing, run)
    out.update(paid)
    out["X-Model-CID"] = listing.model_cid
    return answer, out


@functools.lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


class EnvironHeaders:
    """A request's headers, read straight from its WSGI environ (what a payment method
    reads of them: `get`). werkzeug's EnvironHeaders does the same through its Headers
    machinery: 1.8 us for a paid call's three reads, against 0.3 here."""

    __slots__ = ("environ",)

    def __init__(self, environ: WSGIEnvironment) -> None:
        self.environ = environ

    def get(self, key: str) -> str | None:
        value: str | None = self.environ.get(_environ_key(key))
        return value


class PaidRoute:
    """WSGI middleware: POST /v2/models/{id}/infer answered here, the rest by `app`."""

    def __init__(self, app: WSGIApplication, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            match = INFER.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None and (model_id := int(match[1])) <= MAX_MODEL_ID:
                return self.infer(environ, start_response, model_id)
        return self.app(environ, start_response)

    def infer(
        self, environ: WSGIEnvironment, start_response: StartResponse, model_id: int
    ) -> Iterable[bytes]:
        gateway = self.gateway
        status = 200
        try:
            gateway.start_background()
            body, headers = paid_inference(
                gateway, model_id, EnvironHeaders(environ), lambda: _read_body(environ, gateway)
            )
        except Exception as exc:
            try:
                path = environ.get("PATH_INFO", "")
                status, error, headers = error_answer(exc, path, lambda: get_current_url(environ))
                body = orjson.dumps(error)
            except Exception:  # the mapping itself failed: still a JSON 500, logged
                log.exception("mapping an error failed")
                status, headers, body = 500, {}, _INTERNAL
            headers["Content-Type"] = "application/json"
        headers.update(answer_headers.INFERENCE_ANSWER)
        headers["Content-Length"] = str(len(body))
        start_response(STATUS[status], list(headers.items()))
        return [body]


def _read_body(environ: WSGIEnvironment, gateway: Gateway) -> bytes:
    """The body, bounded before anything is read: 413 past the limit, whether its length
    is declared or it streams in chunks; 400 when the client stops sending (a reset, a
    cut chunk) before the end. As werkzeug's `get_input_stream` does, without the Python
    stream wrapper that cost ~4 us a call."""
    limit = gateway.settings.max_infer_body_bytes
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH")
    try:
        if declared:
            if not (declared.isascii() and declared.isdigit()):
                raise errors.BadRequest("Content-Length must be a non-negative integer")
            length = int(declared)
            if length > limit:
                raise RequestEntityTooLarge()
            return _read_exactly(stream, length)
        if "wsgi.input_terminated" not in environ:
            return b""  # no length, and a server that does not end the stream: not read
        body = _read_exactly(stream, limit + 1, eof_ok=True)
    except OSError:  # reset, timed out, a chunk cut short: the server could read no more
        raise ClientDisconnected() from None
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _read_exactly(stream: Any, size: int, *, eof_ok: bool = False) -> bytes:
    # a WSGI stream may return less than asked before its end (PEP 3333): read on
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = stream.read(left)
        if not part:
            if eof_ok:
                break
            raise ClientDisconnected()  # the client stopped before its declared length
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
