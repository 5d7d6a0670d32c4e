"""The buyer SDK: the gateway's HTTP API as typed Python calls. Sign in with an Ethereum
key, manage API keys, search listings, prepare and redeem purchases, read credits, and
run paid inference with numpy arrays in and out (the binary tensor extension, so large
inputs cost no JSON). Errors are domain errors: the gateway's own code and message.

    client = ModelMarketClient("http://127.0.0.1:8000")
    client.sign_in(private_key)
    result = client.infer(1, {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)})
    print(result.outputs["label"], result.calls_left)

Or pay each call with x402 instead (no sign-in, no purchase): `client.pay_per_call(key)`.
"""

from __future__ import annotations

import base64
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import orjson
import requests
from eth_account import Account
from eth_account.messages import encode_defunct

from inference import codecs
from marketplace import errors


class MessageSigner(Protocol):
    """Who signs the sign-in message."""

    @property
    def address(self) -> str: ...

    def sign_message(self, text: str) -> bytes: ...


class _KeySigner:
    def __init__(self, private_key: str) -> None:
        self._account = Account.from_key(private_key)
        self.address = str(self._account.address)

    def sign_message(self, text: str) -> bytes:
        return bytes(self._account.sign_message(encode_defunct(text=text)).signature)


class TypedDataSigner(Protocol):
    """Who signs an x402 payment (EIP-712), such as `chain.transactions.Signer`."""

    @property
    def address(self) -> str: ...

    def sign_typed_data(self, full_message: dict[str, Any]) -> tuple[int, bytes, bytes]: ...


class _X402Signer:
    """A TypedDataSigner as the x402 SDK's ClientEvmSigner: the same EIP-712 message,
    the 65-byte signature (r, s, v)."""

    def __init__(self, signer: TypedDataSigner) -> None:
        self._signer = signer
        self.address = str(signer.address)

    def sign_typed_data(
        self, domain: Any, types: dict[str, Any], primary_type: str, message: dict[str, Any]
    ) -> bytes:
        from marketplace.chain.per_call import DOMAIN_FIELDS  # the x402 path loads web3 anyway

        def field(f: Any) -> dict[str, str]:
            return f if isinstance(f, dict) else {"name": f.name, "type": f.type}

        if not isinstance(domain, dict):
            domain = {
                "name": domain.name,
                "version": domain.version,
                "chainId": domain.chain_id,
                "verifyingContract": domain.verifying_contract,
            }
        typed_types = {name: [field(f) for f in fs] for name, fs in types.items()}
        by_name = {f["name"]: f for f in DOMAIN_FIELDS}
        typed_types.setdefault("EIP712Domain", [by_name[k] for k in domain])
        typed = {
            "types": typed_types,
            "primaryType": primary_type,
            "domain": domain,
            "message": message,
        }
        v, r, s = self._signer.sign_typed_data(typed)
        return r + s + bytes([v])


@dataclass(frozen=True)
class InferResult:
    """A paid call's answer: the output arrays, and what the payment said."""

    outputs: dict[str, np.ndarray]
    calls_left: int | None  # prepaid credits; None when the call was paid with x402
    inference_id: str
    model_cid: str
    payment_tx: str | None = None  # x402: the settlement's transaction
    receipt: str | None = None  # the usage receipt (X-Usage-Receipt), when the gateway issues them


class ModelMarketClient:
    """One gateway, and optionally the API key calls are made with."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._http = requests.Session()
        self._per_call = False

    # ------------------------------------------------------------- sign-in, keys

    def sign_in(self, signer: MessageSigner | str, key_name: str = "sdk") -> str:
        """Sign in with Ethereum as `signer` (a private key, or anything that signs EIP-191
        messages, such as `chain.transactions.Signer`); the new API key is kept for the
        calls that follow, and returned (it is shown once)."""
        account = _KeySigner(signer) if isinstance(signer, str) else signer
        terms = self._call("POST", "/api/v1/auth/nonce")
        # siwe compiles its ABNF grammar at import (~1 s): only signing in pays for it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # abnf's grammar warnings at import
            import siwe

        message = siwe.SiweMessage(
            domain=terms["domain"],
            address=account.address,
            statement="Sign in to ModelMarket",
            uri=terms["uri"],
            version="1",
            chain_id=terms["chain_id"],
            nonce=terms["nonce"],
            issued_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        ).prepare_message()
        signature = account.sign_message(message)
        answer = self._call(
            "POST",
            "/api/v1/auth/verify",
            json={
                "message": message,
                "signature": "0x" + bytes(signature).hex(),
                "key_name": key_name,
            },
        )
        self.api_key = str(answer["api_key"])
        return self.api_key

    def keys(self) -> list[dict[str, Any]]:
        """The signed-in address's API keys (never their secrets)."""
        return list(self._call("GET", "/api/v1/keys"))

    def revoke_key(self, key_id: str) -> None:
        """Revoke one of the signed-in address's keys."""
        self._call("DELETE", f"/api/v1/keys/{key_id}")

    # ------------------------------------------------------------------ listings

    def deployment(self) -> dict[str, Any]:
        """The chain id and contract addresses the gateway serves."""
        return dict(self._call("GET", "/api/v1/deployment"))

    def models(self, text: str | None = None, **query: Any) -> dict[str, Any]:
        """A page of offered listings (`tag`, `min_price`, `max_price`, `sort`, `page`,
        `per_page` as the API takes them)."""
        params = {"q": text, **query}
        clean = {k: v for k, v in params.items() if v is not None}
        return dict(self._call("GET", "/api/v1/models", params=clean))

    def model(self, model_id: int) -> dict[str, Any]:
        """One listing with its model card."""
        return dict(self._call("GET", f"/api/v1/models/{model_id}"))

    def seller_models(self, seller: str) -> list[dict[str, Any]]:
        """A seller's listings, offered or not, with the calls each sold and served."""
        return list(self._call("GET", f"/api/v1/sellers/{seller}/models"))

    def metadata(self, model_id: int) -> dict[str, Any]:
        """The model's inputs and outputs (Open Inference Protocol metadata)."""
        return dict(self._call("GET", f"/v2/models/{model_id}"))

    # ----------------------------------------------------------------- payments

    def purchase_plan(
        self, model_id: int, calls: int, *, buyer: str | None = None, deadline: int | None = None
    ) -> dict[str, Any]:
        """Calldata for approve + purchase (and permit typed data given buyer and deadline)."""
        body: dict[str, Any] = {"calls": calls}
        if buyer and deadline:
            body |= {"buyer": buyer, "deadline": deadline}
        return dict(self._call("POST", f"/api/v1/models/{model_id}/purchase", json=body))

    def redeem(self, tx_hash: str) -> list[dict[str, Any]]:
        """Credit a purchase transaction to the signed-in buyer."""
        return list(self._call("POST", "/api/v1/receipts", json={"tx_hash": tx_hash})["credited"])

    def credits(self) -> dict[int, int]:
        """Calls left per model."""
        return {
            int(c["model_id"]): int(c["remaining"]) for c in self._call("GET", "/api/v1/credits")
        }

    def pay_per_call(self, signer: TypedDataSigner | str, *, max_amount: int) -> None:
        """Pay each following `infer` with x402 (the gateway's `exact` offer: an EIP-3009
        authorization signed by `signer`, settled on-chain by the gateway) instead of
        prepaid credits; never more than `max_amount` (smallest units) a call. Only the
        deployment's own token is paid (read from the gateway)."""
        from x402 import x402ClientSync
        from x402.client_base import SpendControlAsset
        from x402.http.clients.requests import x402HTTPAdapter
        from x402.mechanisms.evm.exact import ExactEvmScheme

        deployment = self._call("GET", "/api/v1/deployment")
        account = Account.from_key(signer) if isinstance(signer, str) else _X402Signer(signer)
        payer = x402ClientSync().register("eip155:*", ExactEvmScheme(account))
        asset: SpendControlAsset = {
            "network": f"eip155:{deployment['chain_id']}",
            "asset": deployment["token"],
            "max_amount_per_payment": str(max_amount),
        }
        payer.set_spend_controls({"allowed_assets": [asset]})
        self._http.mount(self.base_url + "/v2/", x402HTTPAdapter(payer))
        self._per_call = True

    def infer(self, model_id: int, inputs: dict[str, np.ndarray]) -> InferResult:
        """One paid call (prepaid credits, or x402 after `pay_per_call`); inputs and
        outputs travel as binary tensors."""
        body, headers = codecs.encode_request(inputs, binary=True)
        try:
            response = self._send(
                "POST",
                f"/v2/models/{model_id}/infer",
                data=body,
                headers=headers,
                auth=not self._per_call,
            )
        except errors.RemoteError:
            raise
        except Exception as exc:  # the x402 SDK refused to pay (over the cap, another asset)
            if type(exc).__name__ != "PaymentError":
                raise
            raise errors.PaymentRequired(f"not paid: {exc}", []) from None
        length = response.headers.get(codecs.HEADER_LENGTH)
        outputs = codecs.decode_response(response.content, int(length) if length else None)
        left = response.headers.get("X-Credits-Remaining")
        settled = response.headers.get("PAYMENT-RESPONSE")
        return InferResult(
            outputs,
            int(left) if left is not None else None,
            response.headers.get("X-Inference-Id", ""),
            response.headers.get("X-Model-CID", ""),
            orjson.loads(base64.b64decode(settled)).get("transaction") if settled else None,
            response.headers.get("X-Usage-Receipt"),
        )

    # ---------------------------------------------------------------- audit trail

    def usage(self, inference_id: str) -> dict[str, Any]:
        """One of your calls' usage receipt with its proof (signed in as its buyer)."""
        return dict(self._call("GET", f"/api/v1/usage/{inference_id}"))

    def usage_proof(self, inference_id: str, leaf: str) -> dict[str, Any]:
        """A receipt's inclusion proof and batch (for whoever holds it: its `leaf`)."""
        path = f"/api/v1/usage/{inference_id}/proof"
        return dict(self._call("GET", path, params={"leaf": leaf}, auth=False))

    def batches(self, gateway: str | None = None, **query: Any) -> dict[str, Any]:
        """A gateway's anchored receipt batches, newest first."""
        params = {**query, **({"gateway": gateway} if gateway else {})}
        return dict(self._call("GET", "/api/v1/batches", params=params, auth=False))

    # ---------------------------------------------------------------- transport

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        return orjson.loads(self._send(method, path, **kw).content)

    def _send(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", None) or {})
        if self.api_key and auth:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            response = self._http.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, **kw
            )
        except requests.RequestException:
            raise errors.GatewayUnavailable(
                f"cannot reach the gateway at {self.base_url}"
            ) from None
        if response.status_code >= 400:
            raise _remote_error(response)
        return response


def _remote_error(response: requests.Response) -> errors.RemoteError:
    """The gateway's error, in either API family's shape."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = {}
    code = str(body.get("code") or body.get("error") or "http_error")
    message = str(body.get("message") or body.get("error") or response.reason)
    if message.startswith(f"[{code}] "):  # the /v2 shape names the code in its message
        message = message[len(code) + 3 :]
    return errors.RemoteError(response.status_code, code, message, body.get("accepts"))
