"""The one domain exception hierarchy. Each error has a stable code and an HTTP status.

The web faces map these to `{"error": code, "message": ...}` and the CLI to one line on
stderr; nothing else decides how an error looks.
"""

from __future__ import annotations


class ModelMarketError(Exception):
    """Base of every domain error."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # protocol headers the HTTP answer carries (x402's PAYMENT-RESPONSE, Retry-After)
        self.headers: dict[str, str] = {}

    def to_dict(self) -> dict[str, object]:
        """The JSON body the HTTP faces return."""
        return {"error": self.code, "message": self.message}


class ConfigurationError(ModelMarketError):
    """The settings or the deployment record are missing or inconsistent."""

    code = "configuration_error"
    http_status = 500


class ChainError(ModelMarketError):
    """Talking to the chain failed."""

    code = "chain_error"
    http_status = 502


class ChainUnavailable(ChainError):
    """The JSON-RPC endpoint did not answer."""

    code = "chain_unavailable"
    http_status = 503


class TransactionTimeout(ChainError):
    """A sent transaction was not mined in time."""

    code = "transaction_timeout"
    http_status = 504


class SettlementRefused(ChainError):
    """The node refused our settlement transaction (no gas in the settler's account, a
    nonce it never freed): nothing was sent, nothing moved."""

    code = "settlement_refused"
    http_status = 503


class ContractRevert(ChainError):
    """The contract refused the call; `name` and `args` are the decoded custom error."""

    code = "contract_revert"
    http_status = 400

    def __init__(self, message: str, name: str = "", args: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.revert_name = name
        self.revert_args = args


class ModelNotFound(ContractRevert):
    code = "model_not_found"
    http_status = 404


class NotSeller(ContractRevert):
    code = "not_seller"
    http_status = 403


class ListingInactive(ContractRevert):
    code = "listing_inactive"
    http_status = 409


class ListingActive(ContractRevert):
    code = "listing_active"
    http_status = 409


class PriceAboveMax(ContractRevert):
    code = "price_above_max"
    http_status = 409


class InvalidPrice(ContractRevert):
    code = "invalid_price"


class InvalidArgument(ContractRevert):
    code = "invalid_argument"


class TokenNotAllowed(ContractRevert):
    code = "token_not_allowed"


class FeeAboveCap(ContractRevert):
    code = "fee_above_cap"


class NothingToWithdraw(ContractRevert):
    code = "nothing_to_withdraw"
    http_status = 409


class MarketplacePaused(ContractRevert):
    code = "marketplace_paused"
    http_status = 503


class NotOwner(ContractRevert):
    code = "not_owner"
    http_status = 403


class InsufficientFunds(ContractRevert):
    code = "insufficient_funds"
    http_status = 402


class InsufficientAllowance(ContractRevert):
    code = "insufficient_allowance"
    http_status = 402


class PermitInvalid(ContractRevert):
    code = "permit_invalid"


# ------------------------------------------------------------------ the gateway


class BadRequest(ModelMarketError):
    """The request is malformed; the message names the field."""

    code = "bad_request"
    http_status = 400


class NotFound(ModelMarketError):
    code = "not_found"
    http_status = 404


class ModelRefused(ModelMarketError):
    """The listing's model failed the indexer's checks: it is not offered or served."""

    code = "model_refused"
    http_status = 409


class ModelPending(ModelMarketError):
    """The listing's model has not been fetched and checked yet; try again shortly."""

    code = "model_pending"
    http_status = 503


class DatabaseUnavailable(ModelMarketError):
    """The database does not answer; nothing was charged."""

    code = "database_unavailable"
    http_status = 503


class Unauthenticated(ModelMarketError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthenticated"
    http_status = 401


class SiweRejected(Unauthenticated):
    """A Sign-In with Ethereum message or signature was refused."""

    code = "siwe_rejected"


class CsrfRejected(ModelMarketError):
    """A cookie-authenticated change without this session's CSRF token."""

    code = "csrf_rejected"
    http_status = 403


class PaymentRequired(ModelMarketError):
    """No credit left for this model; `accepts` says how to buy more (x402-style)."""

    code = "payment_required"
    http_status = 402

    def __init__(self, message: str, accepts: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.accepts = accepts

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "accepts": self.accepts}


class PaymentInvalid(PaymentRequired):
    """An x402 payment that cannot pay for this call (bad signature, amount below the
    price, outside its time window, a short balance, another offer): nothing was taken."""

    code = "payment_invalid"


class SettlementFailed(PaymentRequired):
    """The call ran but its x402 settlement failed on-chain (nothing moved): the answer
    is withheld, as x402 says."""

    code = "settlement_failed"


class PaymentAlreadyUsed(ModelMarketError):
    """An x402 authorization (or payment id) that already paid for a call it was
    answered for: refused, and not a 402 (it must not invite paying again)."""

    code = "payment_already_used"
    http_status = 409


class PaymentInProgress(ModelMarketError):
    """The same x402 authorization (or payment id) is paying for a call right now."""

    code = "payment_in_progress"
    http_status = 409


class SettlementPending(ModelMarketError):
    """The settlement was sent and is not mined yet: the outcome is unknown, so no 402
    (that would invite paying twice). It settles at most once; the same request sent
    again gets its answer once it has."""

    code = "settlement_pending"
    http_status = 504


class PaidCallFailed(Exception):
    """A paid call that failed after its payment began: the cause (mapped as itself) and
    the headers its payment method added (what was given back, the inference id)."""

    def __init__(self, cause: Exception, headers: dict[str, str]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.headers = headers


class RemoteError(ModelMarketError):
    """An error the gateway answered with, as the buyer SDK raises it: the gateway's own
    stable code, HTTP status and message (a 402 keeps its `accepts`)."""

    def __init__(
        self, status: int, code: str, message: str, accepts: list[dict[str, object]] | None
    ) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code
        self.accepts = accepts or []


class PurchaseNotRedeemed(ModelMarketError):
    """Tokens moved on-chain but the gateway did not credit them yet (the indexer will)."""

    code = "purchase_not_redeemed"
    http_status = 503


class GatewayUnavailable(ModelMarketError):
    """The gateway did not answer."""

    code = "gateway_unavailable"
    http_status = 503


class ReceiptRejected(ModelMarketError):
    """A posted transaction does not prove a purchase by the caller. Subclasses say why."""

    code = "receipt_rejected"
    http_status = 400


class ReceiptNotFound(ReceiptRejected):
    code = "receipt_not_found"
    http_status = 404


class ReceiptReverted(ReceiptRejected):
    code = "receipt_reverted"


class ReceiptWrongChain(ReceiptRejected):
    code = "receipt_wrong_chain"


class ReceiptWrongContract(ReceiptRejected):
    code = "receipt_wrong_contract"


class ReceiptUnconfirmed(ReceiptRejected):
    code = "receipt_unconfirmed"
    http_status = 409


class ReceiptNotBuyer(ReceiptRejected):
    code = "receipt_not_buyer"
    http_status = 403


class ReceiptAlreadyRedeemed(ReceiptRejected):
    code = "receipt_already_redeemed"
    http_status = 409


class ReceiptNotPurchase(ReceiptRejected):
    code = "receipt_not_purchase"


# ------------------------------------------------- the one mapping of every error

# storage and inference errors: their stable code -> the HTTP status it answers with
_FOREIGN: dict[str, int] = {
    "content_mismatch": 502,
    "content_not_found": 503,
    "store_unavailable": 503,
    "store_timeout": 504,
    "content_too_large": 507,
    "cache_disk_full": 507,
    "invalid_cid": 502,
    "bad_input": 400,
    "input_too_large": 413,
    "inference_timeout": 504,
    "resource_exhausted": 503,
    "inference_failed": 500,
}


def oip_body(body: dict[str, object]) -> dict[str, object]:
    """The Open Inference Protocol's error shape for an error `body`: `error` is the
    human message (what tritonclient and KServe clients show their users), naming the
    stable code, which also travels in `code` beside the rest (`accepts` on a 402)."""
    code, message = body["error"], body["message"]
    rest = {k: v for k, v in body.items() if k not in ("error", "message")}
    return {"error": f"[{code}] {message}", "code": code, **rest}


# Seconds to wait before trying again, by the code of a 503/504: a restarted dependency
# is back in seconds; a model not fetched yet waits for the indexer's next round.
_RETRY_AFTER: dict[str, int] = {
    **dict.fromkeys(("database_unavailable", "resource_exhausted"), 1),
    **dict.fromkeys(("chain_unavailable", "store_unavailable", "purchase_not_redeemed"), 5),
    **dict.fromkeys(("settlement_refused", "store_timeout", "model_pending"), 10),
    **{"content_not_found": 30, "marketplace_paused": 60},
}


def retry_after(status: int, code: str) -> int | None:
    """Seconds a 503 (or a 504 a retry may cure) asks the client to wait, else None."""
    if status == 503:
        return _RETRY_AFTER.get(code, 5)
    return _RETRY_AFTER.get(code) if status == 504 else None


def describe(exc: BaseException) -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON body) for any error a request can meet; the web faces and the
    CLI both go through here."""
    if isinstance(exc, PaidCallFailed):
        return describe(exc.cause)
    if isinstance(exc, ModelMarketError):
        return exc.http_status, exc.to_dict()
    from inference.errors import InferenceError, InvalidModel
    from marketplace.db.engine import unreachable
    from storage.errors import StorageError

    if isinstance(exc, InvalidModel):
        return 422, {"error": exc.code, "message": exc.message}
    if isinstance(exc, StorageError | InferenceError):
        return _FOREIGN.get(exc.code, 500), {"error": exc.code, "message": exc.message}
    if unreachable(exc):  # the driver's text names host and statement: not shown
        message = "the database does not answer; try again shortly"
        return 503, {"error": DatabaseUnavailable.code, "message": message}
    return 500, {"error": "internal_error", "message": "an unexpected error; it was logged"}
