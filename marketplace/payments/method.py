"""The payment method protocol: how one way of paying for a call plugs into the paid
call, in snet-daemon's shape (its `PaymentHandler`). A method says whether a request
pays with it and who pays, what it offers in a 402, and then runs the call's money in
three steps: `begin` (take the money or reserve it; refuse with a domain error),
`complete` (the call was served) or `complete_after_error` (give it back). Each method
lives in one module; `payments/pipeline.py` runs them all the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from marketplace.db.tables import Listing
from marketplace.usage.records import UsageRecord


class Headers(Protocol):
    """What a method reads of a request's headers (Werkzeug's Headers, or a dict)."""

    def get(self, key: str) -> str | None: ...


class Payer(NamedTuple):
    """Who pays for a call, as a method identified them (nothing taken yet). A
    NamedTuple: made on every paid call."""

    address: str  # the buyer's address, lower case
    key_id: str  # the credential that identified them (an API key's id), at most 16 chars
    credential: object = None  # what the method read to identify them (an x402 payment)
    request: bytes | None = None  # sha256 of the request body, for methods that bind it


@dataclass(eq=False)
class Payment:
    """One begun payment. Methods subclass it with what they need to complete it."""

    inference_id: str
    payer: Payer
    model_id: int
    reference: str | None = None  # the method's own handle, kept on the usage row
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    done: bool = False  # completed, either way: each method completes a payment once

    @property
    def price(self) -> int | None:
        """What this call was charged in token units, when the method knows it (None:
        the listing's price per call, as prepaid credits are counted)."""
        return None

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class PaymentMethod(Protocol):
    """One way to pay for a paid call."""

    name: str  # stable: shown in 402 offers and logs
    # whether `begin` needs the request's digest (Payer.request): a method whose payment
    # can be replayed by whoever sees it binds it to the request it was made for
    binds_request: bool

    def claims(self, headers: Headers) -> bool:
        """Whether this request pays with this method (its credential is present)."""
        ...

    def identify(self, headers: Headers) -> Payer:
        """Who pays: the credential checked, nothing taken (Unauthenticated otherwise).
        Cheap: it runs before the request body is read."""
        ...

    def offer(self, listing: Listing) -> dict[str, object] | None:
        """This method's entry in a 402's `accepts` for `listing`, or None when the
        listing cannot be paid for this way (a delisted model is sold no more)."""
        ...

    def begin(self, payer: Payer, listing: Listing, inference_id: str) -> Payment:
        """Take or reserve the price of one call; PaymentRequired (or another domain
        error) when it cannot be paid."""
        ...

    def complete(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        """The call was served: keep the money and record `usage` with the method's own
        accounting (in the same transaction; prepaid credits write it in their next
        round). Returns the headers the answer carries."""
        ...

    def complete_after_error(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        """The call failed on our side: give the money back (once), record `usage`.
        Returns the headers the error answer carries."""
        ...
