"""One paid call, whatever pays for it: pick the method from the request, mint the
inference id, begin, run the model, complete (or complete after error), hand the method
the call's usage row, and build the 402 from every method's offer.

The usage row is built here and written by the method, in the same transaction as its
own accounting: for prepaid credits the row is what counts a call against its lease, so
writing it apart would let a crash between the two charge a call twice or never.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from marketplace import errors, metrics
from marketplace.db.tables import Listing
from marketplace.payments.method import Headers, Payer, Payment, PaymentMethod
from marketplace.usage import receipts
from marketplace.usage.anchoring import ReceiptIssuer
from marketplace.usage.records import UsageRecord

# What a served call hands back beside its answer: the digests of its input and output
# tensors (`inference.digests`), for its receipt; None when receipts are off.
Digests = tuple[bytes, bytes] | None

T = TypeVar("T")
MAX_ERROR_CODE = 64  # the usage row's column


class InferenceIds:
    """Inference ids: unique across workers and restarts, not secret (usage is shown
    only to the key's owner). os.urandom per call cost as much as the rest of the
    payment, so a random prefix per process and a counter (next() is atomic)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():  # gunicorn may build the app before forking
            self._prefix, self._pid = secrets.token_hex(10), os.getpid()
        return f"{self._prefix}{next(self._count):012x}"


class PaymentPipeline:
    """The payment methods of a gateway, in the order their offers are listed."""

    def __init__(
        self,
        methods: Sequence[PaymentMethod] = (),
        receipts: Callable[[], ReceiptIssuer | None] = lambda: None,
    ) -> None:
        self.methods: list[PaymentMethod] = list(methods)
        self.ids = InferenceIds()
        self.issuer = receipts  # the receipt issuer, None when receipts are off

    def register(self, method: PaymentMethod) -> None:
        """Accept payments with `method` from now on (its offer goes last)."""
        self.methods.append(method)

    def identify(self, headers: Headers) -> tuple[PaymentMethod, Payer] | None:
        """The method this request pays with, and who pays; None when the request
        names no method (it is answered with a 402 listing every offer)."""
        if not self.methods:
            raise errors.ConfigurationError("no payment method is registered")
        method = next((m for m in self.methods if m.claims(headers)), None)
        return None if method is None else (method, method.identify(headers))

    def unpaid(self, listing: Listing) -> errors.PaymentRequired:
        """The 402 for a request that names no payment method."""
        return errors.PaymentRequired(
            f"model {listing.model_id} is paid per call: send an x402 payment"
            " (PAYMENT-SIGNATURE) for one of the offers, or an API key with prepaid credits"
            " (Authorization: Bearer)",
            self.offers(listing),
        )

    def offers(self, listing: Listing) -> list[dict[str, object]]:
        """Every method's offer for `listing` (a 402's `accepts`)."""
        return [offer for m in self.methods if (offer := m.offer(listing)) is not None]

    def begin(self, method: PaymentMethod, payer: Payer, listing: Listing) -> Payment:
        """Begin paying for one call; a 402 lists every method's offer."""
        try:
            return method.begin(payer, listing, self.ids.next())
        except errors.PaymentRequired as exc:
            exc.accepts = self.offers(listing)  # its class (why) and headers stay
            raise

    def complete(
        self,
        method: PaymentMethod,
        payment: Payment,
        listing: Listing,
        receipt: receipts.Receipt | None = None,
    ) -> dict[str, str]:
        """The call was served: the headers the answer carries (a settlement that fails
        now is a 402 listing every offer, the answer withheld). Its receipt, if any, is
        written with its usage row and carried in X-Usage-Receipt."""
        try:
            headers = method.complete(payment, _usage(payment, "ok", None, receipt))
        except errors.PaymentRequired as exc:
            exc.accepts = self.offers(listing)
            raise
        headers["X-Inference-Id"] = payment.inference_id
        if receipt is not None:
            issuer = self.issuer()
            assert issuer is not None
            headers[receipts.HEADER] = receipts.header(receipt, issuer.domain)
        return headers

    def receipt(
        self, method: PaymentMethod, payment: Payment, listing: Listing, digests: Digests
    ) -> receipts.Receipt | None:
        """The receipt of a served call, or None when receipts are off."""
        if digests is None or (issuer := self.issuer()) is None:
            return None
        price = payment.price
        return issuer.issue(
            payment.inference_id,
            payment.model_id,
            listing.model_cid,
            payment.payer.address,
            listing.price_per_call if price is None else price,
            method.name,
            payment.created_at.timestamp(),
            digests,
        )

    def complete_after_error(
        self, method: PaymentMethod, payment: Payment, exc: Exception
    ) -> dict[str, str]:
        """The call failed with `exc` after its payment began: given back; the headers
        the error answer carries."""
        code = str(errors.describe(exc)[1]["error"])[:MAX_ERROR_CODE]
        headers = method.complete_after_error(payment, _usage(payment, "failed", code))
        headers["X-Inference-Id"] = payment.inference_id
        return headers

    def run(
        self,
        method: PaymentMethod,
        payer: Payer,
        listing: Listing,
        call: Callable[[], tuple[T, Digests]],
    ) -> tuple[T, dict[str, str]]:
        """Begin, run `call`, complete: its result and the headers the answer carries.
        A failure after the payment began (making its receipt included: no receipt, no
        charge) is given back and raised as a PaidCallFailed that carries the cause and
        the headers saying what was given back."""
        started = time.perf_counter()
        try:
            payment = self.begin(method, payer, listing)
        except errors.ModelMarketError as exc:  # refused before anything ran
            metrics.call_finished(listing.model_id, method.name, exc.code, None)
            raise
        try:
            result, digests = call()
            receipt = self.receipt(method, payment, listing, digests)
        except Exception as exc:
            headers = self.complete_after_error(method, payment, exc)
            code = str(errors.describe(exc)[1]["error"])
            metrics.call_finished(payment.model_id, method.name, code, _since(started))
            raise errors.PaidCallFailed(exc, headers) from exc
        try:
            headers = self.complete(method, payment, listing, receipt)
        except errors.ModelMarketError as exc:  # the settlement failed: nothing charged
            metrics.call_finished(payment.model_id, method.name, exc.code, None)
            raise
        metrics.call_finished(payment.model_id, method.name, "ok", _since(started))
        return result, headers


def _since(started: float) -> float:
    return time.perf_counter() - started


def _usage(
    payment: Payment, status: str, error: str | None, receipt: receipts.Receipt | None = None
) -> UsageRecord:
    payer = payment.payer
    return UsageRecord(  # positional: a third of the keyword form's cost, on every call
        payment.inference_id,
        payer.key_id,
        payer.address,
        payment.model_id,
        status,
        payment.reference,
        error,
        payment.elapsed_ms,
        True,
        status != "ok",
        payment.created_at,
        receipt,
    )
