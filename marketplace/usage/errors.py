"""Errors of usage receipts, in the one domain hierarchy (`marketplace.errors`)."""

from __future__ import annotations

from marketplace.errors import BadRequest


class InvalidReceipt(BadRequest):
    """A usage receipt that is not well formed: a field missing, of the wrong type or
    out of range (the message names it)."""

    code = "invalid_usage_receipt"
