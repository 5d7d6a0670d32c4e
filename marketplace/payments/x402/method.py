"""x402's `exact` scheme on EVM as a payment method: each call paid with the payer's
EIP-3009 authorization of the price to the marketplace contract (`payTo`), which the
gateway's settler submits through `settlePerCall` so the seller is credited on-chain,
per model, less the protocol fee.

A call: the payment is read and checked here (the offer it accepted, amount >= price,
time window, signature) -> the settlement is simulated on-chain (balance, unused nonce,
the token's own signature check) -> the nonce is reserved in the database (one use
across workers and replicas) -> inference -> the signed settlement is stored, then sent
-> mined: the answer goes out with PAYMENT-RESPONSE. A failed inference releases the
reservation. Not mined in time: 504 settlement_pending, never a 402; the reconciler
finishes it, and the same request again gets its answer (once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy import Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from marketplace import errors
from marketplace.chain.per_call import Authorization, Settler, SignedSettlement, refusal
from marketplace.db.tables import Listing
from marketplace.payments.method import Headers, Payer, Payment
from marketplace.payments.x402 import settlements
from marketplace.payments.x402.headers import (
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    X_PAYMENT,
    SignedPayment,
    already_answered,
    payment_response_header,
    pending_error,
    read_payment,
)
from marketplace.payments.x402.reconcile import SETTLE_MARGIN, Reconciler
from marketplace.usage.records import UsageRecord, write_usage

KEY_ID = "x402"  # the usage rows' credential column


@dataclass(eq=False)
class PerCallPayment(Payment):
    """One call paid with an x402 authorization."""

    auth: Authorization | None = None
    gas: int = 0
    settled_tx: str | None = None  # settled before: this call is the answer it is owed
    price = property(lambda self: None if self.auth is None else self.auth.value)


class X402Exact:
    """Pay per call with an EIP-3009 authorization (x402 `exact`, EVM)."""

    name = "x402"
    binds_request = True  # an authorization is public once its settlement is sent

    def __init__(
        self,
        engine: Engine,
        *,
        settler: Callable[[], Settler | None],
        settle_timeout: float = 20.0,
        reservation_ttl: float = 120.0,
        max_timeout_seconds: int = 300,
    ) -> None:
        self.engine = engine
        self._settler = settler
        self.reconciler = Reconciler(
            engine, settler, settle_timeout=settle_timeout, reservation_ttl=reservation_ttl
        )
        self.max_timeout_seconds = max_timeout_seconds
        self._exact_tokens: dict[str, dict[str, str] | None] = {}  # token -> EIP-712 name/version

    # ---------------------------------------------------------------- the method

    def claims(self, headers: Headers) -> bool:
        """A PAYMENT-SIGNATURE (or version 1's X-PAYMENT) header pays with x402."""
        return headers.get(PAYMENT_SIGNATURE) is not None or headers.get(X_PAYMENT) is not None

    def identify(self, headers: Headers) -> Payer:
        """The authorization's signer, as it claims (checked in `begin`)."""
        payment = read_payment(headers.get(PAYMENT_SIGNATURE) or headers.get(X_PAYMENT) or "")
        return Payer(payment.authorization.payer.lower(), KEY_ID, payment)

    def offer(self, listing: Listing) -> dict[str, object] | None:
        """An `exact` offer of one call at the listing's price, paid to the marketplace;
        none without a settler, for a delisted model, or in a token without EIP-3009."""
        settler = self._settler()
        if settler is None or not listing.active:
            return None
        extra = self._token_domain(settler, listing.token)
        if extra is None:
            return None
        return {
            "scheme": "exact",
            "network": self._network(settler),
            "amount": str(listing.price_per_call),
            "asset": to_checksum_address(listing.token),
            "payTo": settler.market.contract.address,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": extra,
        }

    def begin(self, payer: Payer, listing: Listing, inference_id: str) -> PerCallPayment:
        """Check the payment and reserve its authorization for this call."""
        self.reconciler.start()
        settler = self._require_settler()
        payment = payer.credential
        assert isinstance(payment, SignedPayment)
        auth = payment.authorization
        with self.engine.begin() as conn:  # seen before: its state decides, not its window
            row = settlements.find(conn, auth, payment.payment_id)
        if row is not None:
            return self._again(row, payer, payment, listing, inference_id, settler)
        self._check(payment, listing, settler)
        try:
            gas = self._simulate(settler, listing.model_id, auth)
        except errors.PaymentRequired:  # sent twice at once, its twin may have settled it
            with self.engine.begin() as conn:
                row = settlements.find(conn, auth, payment.payment_id)
            if row is None:
                raise
            return self._again(row, payer, payment, listing, inference_id, settler)
        with self.engine.begin() as conn:
            won = settlements.reserve(
                conn,
                auth,
                payment_id=payment.payment_id,
                model_id=listing.model_id,
                inference_id=inference_id,
                request=payer.request,
            )
            row = None if won else settlements.find(conn, auth, payment.payment_id)
        if row is not None:
            return self._again(row, payer, payment, listing, inference_id, settler)
        if not won:
            raise errors.PaymentInProgress("this payment is paying for another call right now")
        return PerCallPayment(inference_id, payer, listing.model_id, auth=auth, gas=gas)

    def complete(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        """The call was served: settle (unless it was settled before), then answer."""
        assert isinstance(payment, PerCallPayment) and payment.auth is not None
        settler = self._require_settler()
        auth = payment.auth
        payer, nonce = settlements.key(auth)
        if payment.settled_tx is not None:  # the answer a settled payment was owed
            with self.engine.begin() as conn:  # unless a retry took the answer over meanwhile
                if not settlements.delivered(conn, payer, nonce, payment.inference_id):
                    raise already_answered(payment.settled_tx)
                write_usage(conn, [usage])
            return self._paid(settler, payer, payment.settled_tx)

        recorded: list[SignedSettlement] = []

        def record(signed: SignedSettlement) -> None:
            with self.engine.begin() as conn:
                if not settlements.sending(conn, payer, nonce, signed, payment.inference_id):
                    raise errors.PaymentInProgress(
                        "the payment's reservation lapsed while the call ran; nothing was charged"
                    )
            recorded.append(signed)

        signed: SignedSettlement | None = None
        try:
            signed = settler.send(payment.model_id, auth, payment.gas, record)
            receipt = settler.wait(signed.tx_hash, self.reconciler.settle_timeout)
        except errors.PaymentInProgress:
            raise
        except errors.SettlementRefused:
            with self.engine.begin() as conn:  # the node took nothing: free again
                settlements.release(conn, payer, nonce, payment.inference_id, refused=True)
            raise
        except errors.ModelMarketError:
            if not recorded:  # nothing was signed or sent: the authorization is free again
                with self.engine.begin() as conn:
                    settlements.release(conn, payer, nonce, payment.inference_id)
                raise
            # Sent, or maybe sent (the node failed while taking it): the outcome is the
            # chain's to tell; never an error that reads as "not paid".
            receipt, signed = None, recorded[-1]
        if receipt is None:
            with self.engine.begin() as conn:  # no answer will carry it: the reconciler's now
                settlements.gave_up(conn, payer, nonce)
            raise pending_error(signed)
        tx = signed.tx_hash if signed else ""
        if receipt["status"] != 1:
            found = self.reconciler.after_revert(settler, payment.model_id, auth)
            if found is None:
                with self.engine.begin() as conn:
                    settlements.failed(conn, payer, nonce, "reverted")
                raise self._settlement_failed(settler, auth, tx)
            tx = found
        call = payment.inference_id
        try:  # settled and the call recorded in one transaction (or, if a reconciler saw
            # it mined first, the one answer it is owed, claimed)
            with self.engine.begin() as conn:
                ours = settlements.settled(conn, payer, nonce, tx, delivered=True, mine=call)
                if not ours and not settlements.deliver(conn, payer, nonce, call):
                    raise already_answered(tx)
                write_usage(conn, [usage])
        except SQLAlchemyError:  # paid on-chain, not recorded: the reconciler will; never
            raise pending_error(signed) from None  # an answer that reads as "not paid"
        return self._paid(settler, payer, tx)

    def complete_after_error(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        """The call failed: nothing is settled; the authorization is free again (or, if
        it was settled before, still owed its answer)."""
        assert isinstance(payment, PerCallPayment) and payment.auth is not None
        payer, nonce = settlements.key(payment.auth)
        with self.engine.begin() as conn:
            if payment.settled_tx is not None:
                settlements.undeliver(conn, payer, nonce, payment.inference_id)
            else:
                settlements.release(conn, payer, nonce, payment.inference_id)
            write_usage(conn, [usage])
        return {}

    # ------------------------------------------------------------- the checks

    def _check(self, payment: SignedPayment, listing: Listing, settler: Settler) -> None:
        """What can be checked without the chain: the offer, amount, window, signature."""
        auth = payment.authorization
        market = settler.market.contract.address
        if payment.scheme != "exact":
            raise _invalid(f"the scheme {payment.scheme!r} is not offered for this call")
        if payment.network != self._network(settler):
            raise _invalid(f"the network {payment.network!r} is not {self._network(settler)}")
        accepted = payment.accepted
        if payment.version >= 2 and (
            str(accepted.get("asset", "")).lower() != listing.token.lower()
            or str(accepted.get("payTo", "")).lower() != market.lower()
        ):
            raise _invalid("the payment accepted another offer (asset or payTo)")
        if payment.resource_path not in (None, f"/v2/models/{listing.model_id}/infer"):
            # the client signed for another resource (a payment lifted from elsewhere)
            raise _invalid(f"the payment names another resource: {payment.resource_path}")
        if auth.to != market:
            raise _invalid(f"the authorization pays {auth.to}, not the marketplace {market}")
        if auth.value < listing.price_per_call:
            raise _invalid(
                f"the authorization is for {auth.value}, below the price {listing.price_per_call}"
            )
        now = int(time.time())
        if auth.valid_after > now:
            raise _invalid("the authorization is not valid yet (validAfter is in the future)")
        if auth.valid_before < now + SETTLE_MARGIN:
            raise _invalid("the authorization has expired (or expires before it can settle)")
        domain = settler.market.eip712_domain(listing.token)
        if auth.signer(domain) != auth.payer:
            raise _invalid("the signature is not the payer's over this authorization")

    def _simulate(self, settler: Settler, model_id: int, auth: Authorization) -> int:
        try:
            return settler.check(model_id, auth)
        except errors.ContractRevert as exc:
            raise _invalid(refusal(exc)) from None

    def _again(
        self,
        row: Row[Any],
        payer: Payer,
        payment: SignedPayment,
        listing: Listing,
        inference_id: str,
        settler: Settler,
        *,
        looked: bool = False,
    ) -> PerCallPayment:
        """A payment seen before (the same authorization, or the same payment id). It
        answers only the call it was made for: the same signed authorization, on the same
        model, with the same request body (anyone can copy an authorization out of a
        pending settlement's calldata and send it with a request of their own)."""
        auth = payment.authorization
        key_nonce = settlements.key(auth)[1]
        same = row.nonce == key_nonce and row.signature == "0x" + auth.signature.hex()
        request = payer.request.hex() if payer.request is not None else None
        this_call = row.model_id == listing.model_id and row.request_sha256 in (None, request)
        if row.status == "released" and same:  # nothing moved: a new call, checked anew
            self._check(payment, listing, settler)
            gas = self._simulate(settler, listing.model_id, auth)
            with self.engine.begin() as conn:
                if settlements.rereserve(
                    conn,
                    row.payer,
                    row.nonce,
                    inference_id,
                    model_id=listing.model_id,
                    request=payer.request,
                ):
                    return PerCallPayment(inference_id, payer, listing.model_id, auth=auth, gas=gas)
            raise errors.PaymentInProgress("this payment is paying for another call right now")
        if row.status == "settled" and same and this_call:
            with self.engine.begin() as conn:
                owed = settlements.deliver(conn, row.payer, row.nonce, inference_id)
            if owed:
                stored = settlements.authorization(row, settler.market.contract.address)
                return PerCallPayment(
                    inference_id, payer, listing.model_id, auth=stored, settled_tx=row.tx_hash
                )
        if row.status == "settled":
            exc = already_answered(row.tx_hash or "")
            exc.headers = self._paid(settler, row.payer, row.tx_hash or "")
            raise exc
        if not (same and this_call):
            if row.status in ("reserved", "sending"):
                raise errors.PaymentInProgress("this payment is paying for another call")
            raise _invalid("this payment (or its payment id) was made for another call")
        # A settlement still being waited for by the request that sent it is that
        # request's to answer; one whose request gave up (or died) is looked up now.
        waited = time.time() - row.updated_at > self.reconciler.settle_timeout
        abandoned = row.reason == "unanswered" or waited
        if row.status == "sending" and not abandoned:
            raise errors.PaymentInProgress("this payment is paying for another call right now")
        if row.status == "sending" and not looked:
            self.reconciler.reconcile_one(row, settler)
            with self.engine.begin() as conn:
                fresh = settlements.find(conn, auth, payment.payment_id)
            if fresh is not None:
                return self._again(
                    fresh, payer, payment, listing, inference_id, settler, looked=True
                )
        if row.status == "sending":
            raise pending_error(SignedSettlement(row.tx_hash or "", b""))
        if row.status == "reserved":
            raise errors.PaymentInProgress("this payment is paying for another call right now")
        raise _invalid(f"this authorization could not settle ({row.reason}); nothing was charged")

    # ------------------------------------------------------------ the worker
    def reconcile(self) -> int:
        """Finish what crashes and timeouts left, now (the reconciler does so regularly)."""
        return self.reconciler.reconcile()

    def start(self) -> None:
        """Reconcile from now on in this worker (a restarted gateway finishes what it left)."""
        self.reconciler.start()

    def close(self) -> None:
        """Stop this worker's reconciler (the worker is stopping)."""
        self.reconciler.close()

    def _require_settler(self) -> Settler:
        settler = self._settler()
        if settler is None:
            raise errors.PaymentRequired("this gateway takes no x402 payments", [])
        return settler

    def _network(self, settler: Settler) -> str:
        return f"eip155:{settler.market.deployment.chain_id}"

    def _token_domain(self, settler: Settler, token: str) -> dict[str, str] | None:
        """The EIP-712 name and version an `exact` client signs with, when `token` has
        EIP-3009 (read once per token and process); None otherwise."""
        if token in self._exact_tokens:
            return self._exact_tokens[token]
        try:
            name, version, _, _ = settler.market.eip712_domain(token)
            settler.used(token, settler.address, bytes(32))  # EIP-3009's authorizationState
            domain: dict[str, str] | None = {"name": name, "version": version}
        except errors.ChainUnavailable:
            return None  # not cached: the chain may be back for the next 402
        except errors.ChainError:
            domain = None
        self._exact_tokens[token] = domain
        return domain

    def _paid(self, settler: Settler, payer: str, tx: str) -> dict[str, str]:
        header = payment_response_header(
            success=True, transaction=tx, network=self._network(settler), payer=payer
        )
        return {PAYMENT_RESPONSE: header}

    def _settlement_failed(
        self, settler: Settler, auth: Authorization, tx: str
    ) -> errors.SettlementFailed:
        exc = errors.SettlementFailed(
            "the payment did not settle (the payer's balance or authorization changed"
            " after it was checked); nothing was charged and the answer is withheld",
            [],
        )
        exc.headers = {
            PAYMENT_RESPONSE: payment_response_header(
                success=False,
                transaction=tx,
                network=self._network(settler),
                payer=auth.payer,
                reason="settlement_failed",
            )
        }
        return exc


def _invalid(message: str) -> errors.PaymentInvalid:
    return errors.PaymentInvalid(message, [])
