"""The headers every answer carries, whichever face (Flask or the paid route's plain
WSGI) answers it."""

from __future__ import annotations

from marketplace.payments.x402 import headers as x402

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

# Scripts and styles only from our own files: text from the chain or IPFS that escaped
# escaping still could not run. Pages cannot be framed.
EVERY_ANSWER: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

# /v2: a browser's script paying with x402 must be able to read these
INFERENCE_ANSWER: dict[str, str] = {
    **EVERY_ANSWER,
    "Access-Control-Expose-Headers": x402.EXPOSED,
}


def for_path(path: str) -> dict[str, str]:
    """The headers an answer to `path` carries."""
    return INFERENCE_ANSWER if path.startswith("/v2/") else EVERY_ANSWER
