"""The gateway benchmark's baseline: a minimal Flask endpoint that runs the same session
with the same codecs, and nothing else (no key, no credit, no cache, no database)."""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, Response, request

from inference import codecs
from inference.sessions import RuntimeSettings, SessionCache


def create_app() -> Flask:
    """gunicorn 'bench.unpaid_app:create_app()'; BENCH_MODEL names the .onnx file."""
    app = Flask("unpaid")
    sessions = SessionCache(1 << 30, RuntimeSettings())
    model = sessions.get("bench", Path(os.environ["BENCH_MODEL"]))

    @app.post("/infer")
    def infer() -> Response:
        req = codecs.decode_request(request.get_data())
        outputs = sessions.run(model, codecs.check_inputs(model.info, req))
        body, headers = codecs.encode_response("bench", outputs)
        return Response(body, headers=headers)

    return app
