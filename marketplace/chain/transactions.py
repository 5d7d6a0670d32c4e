"""Transactions signed with a local key: the signer, the connection, sending, waiting for
receipts, deploying, and RPC failures turned into domain errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from pydantic import SecretStr
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import (
    TimeExhausted,
)
from web3.providers.rpc.utils import REQUEST_RETRY_ALLOWLIST, ExceptionRetryConfiguration
from web3.types import TxParams, TxReceipt, Wei

from marketplace import errors
from marketplace.chain.artifacts import Artifact
from marketplace.chain.reverts import revert_errors


class Signer:
    """Signs transactions with a local private key. The key never leaves this object:
    not in its repr, not in an error, not in a log."""

    __slots__ = ("_account", "_lock")

    def __init__(self, private_key: str | SecretStr) -> None:
        raw = private_key.get_secret_value() if isinstance(private_key, SecretStr) else private_key
        try:
            self._account: LocalAccount = Account.from_key(raw)
        except Exception:
            # The library's message may quote the bad value; ours never does.
            raise errors.ConfigurationError("the private key is not a valid hex key") from None
        finally:
            del raw
        # One lock per key: nonces are read and used under it.
        self._lock = threading.Lock()

    @property
    def address(self) -> ChecksumAddress:
        """The checksummed address of the key."""
        return self._account.address

    def __repr__(self) -> str:
        return f"Signer({self.address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Signer is not picklable: it holds a private key")

    def sign(self, tx: TxParams) -> HexBytes:
        """The signed raw transaction."""
        return HexBytes(self._account.sign_transaction(dict(tx)).raw_transaction)  # type: ignore[arg-type]

    def sign_message(self, text: str) -> bytes:
        """An EIP-191 personal signature of `text` (what a Sign-In with Ethereum is)."""
        return bytes(self._account.sign_message(encode_defunct(text=text)).signature)

    def sign_typed_data(self, full_message: dict[str, Any]) -> tuple[int, bytes, bytes]:
        """EIP-712 signature as (v, r, s)."""
        signed = self._account.sign_typed_data(full_message=full_message)
        return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")

    @contextmanager
    def nonce_lock(self) -> Iterator[None]:
        """Hold while reading and using a nonce, so two threads never share one."""
        with self._lock:
            yield


# ------------------------------------------------------------------- connect


def connect(rpc_url: str, timeout: float = 10.0, retries: int = 2) -> Web3:
    """A Web3 on `rpc_url`; raises ChainUnavailable when nothing answers there. A read
    that meets a connection error or a timeout is tried `retries` more times, 0.1 s
    apart and doubling. Sending a transaction is not retried here: a node that took it
    answers a resend with "already known", which the senders read as their nonce taken;
    they and the x402 reconciler resend what they recorded themselves."""
    retry = ExceptionRetryConfiguration(
        errors=(requests.exceptions.ConnectionError, requests.exceptions.Timeout),
        retries=retries + 1,  # web3 counts attempts
        backoff_factor=0.1,
        method_allowlist=[m for m in REQUEST_RETRY_ALLOWLIST if m != "eth_sendRawTransaction"],
    )
    provider = Web3.HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=retry
    )
    w3 = Web3(provider)
    with rpc_errors(public_origin(rpc_url)):
        w3.eth.chain_id  # noqa: B018 - the first request proves the endpoint answers
    return w3


def head_block(rpc_url: str, timeout: float) -> int:
    """The chain's newest block number: one request, no retry (health's probe)."""
    provider = Web3.HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
    )
    with rpc_errors(public_origin(rpc_url)):
        return int(Web3(provider).eth.block_number)


def public_origin(url: str) -> str:
    """`scheme://host[:port]` of `url`: hosted RPC URLs carry an API key in their path or
    query, which no message, log or health answer may show."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


@contextmanager
def rpc_errors(where: str = "the chain") -> Iterator[None]:
    """Turn transport failures into ChainUnavailable (never quoting a URL or a payload)."""
    try:
        yield
    except requests.exceptions.Timeout as exc:
        raise errors.ChainUnavailable(f"the JSON-RPC endpoint {where} timed out") from exc
    except requests.exceptions.ConnectionError as exc:
        raise errors.ChainUnavailable(f"cannot reach the JSON-RPC endpoint {where}") from exc
    except requests.exceptions.HTTPError as exc:  # its text quotes the full URL
        status = exc.response.status_code if exc.response is not None else "?"
        raise errors.ChainUnavailable(
            f"the JSON-RPC endpoint {where} answered HTTP {status}"
        ) from None
    except requests.exceptions.RequestException:
        raise errors.ChainUnavailable(f"the JSON-RPC endpoint {where} failed") from None


# ----------------------------------------------------------------- calldata


@cache
def _selector(signature: str) -> tuple[bytes, list[str]]:
    types = signature[signature.index("(") + 1 : -1]
    return function_signature_to_4byte_selector(signature), types.split(",") if types else []


def calldata(signature: str, *args: Any) -> str:
    """0x calldata for `signature` ("purchase(uint256,uint256,uint256)") with `args`.
    web3's `encode_abi` validates the whole ABI on every call (~1-3 ms); this is eth_abi
    alone (~20 us), for the unauthenticated purchase preparation."""
    selector, types = _selector(signature)
    return "0x" + (selector + abi_encode(types, list(args))).hex()


# -------------------------------------------------------------- transactions


def send(
    w3: Web3,
    call: ContractFunction | ContractConstructor,
    signer: Signer,
    artifacts_dir: Path,
    *,
    timeout: float = 120.0,
    value: int = 0,
) -> TxReceipt:
    """Build, sign (locally), send `call` and wait for its receipt.

    A call that would revert is refused before sending, as a domain error.
    """
    with rpc_errors(), revert_errors(artifacts_dir), signer.nonce_lock():
        params: TxParams = {
            "from": signer.address,
            "value": Wei(value),
            "nonce": w3.eth.get_transaction_count(signer.address, "pending"),
        }
        tx = call.build_transaction(params)
        tx_hash = w3.eth.send_raw_transaction(signer.sign(tx))
    return wait_for_receipt(w3, tx_hash, artifacts_dir, timeout=timeout, replay=tx)


def wait_for_receipt(
    w3: Web3,
    tx_hash: bytes,
    artifacts_dir: Path,
    *,
    timeout: float = 120.0,
    replay: TxParams | None = None,
) -> TxReceipt:
    """Wait for a receipt; a reverted transaction raises its decoded domain error."""
    with rpc_errors():
        try:
            receipt = w3.eth.wait_for_transaction_receipt(
                HexBytes(tx_hash), timeout=timeout, poll_latency=0.02
            )
        except TimeExhausted as exc:
            raise errors.TransactionTimeout(
                f"transaction {HexBytes(tx_hash).to_0x_hex()} was not mined in {timeout:g} s"
            ) from exc
    if receipt["status"] != 1:
        if replay is not None and "to" in replay:
            # Re-run it where it failed to learn why; the chain keeps no revert reason.
            call: TxParams = {
                "from": replay["from"],
                "to": replay["to"],
                "data": replay.get("data", b""),
                "value": replay.get("value", Wei(0)),
            }
            with rpc_errors(), revert_errors(artifacts_dir):
                w3.eth.call(call, block_identifier=receipt["blockNumber"] - 1)
        raise errors.ChainError(
            f"transaction {HexBytes(tx_hash).to_0x_hex()} reverted in block"
            f" {receipt['blockNumber']}"
        )
    return receipt


def deploy(
    w3: Web3,
    artifact: Artifact,
    signer: Signer,
    artifacts_dir: Path,
    *args: Any,
    timeout: float = 120.0,
) -> tuple[ChecksumAddress, TxReceipt]:
    """Deploy `artifact` with constructor `args`; returns (address, receipt)."""
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = send(w3, factory.constructor(*args), signer, artifacts_dir, timeout=timeout)
    address = receipt["contractAddress"]
    if address is None:
        raise errors.ChainError("the deployment receipt has no contract address")
    return to_checksum_address(address), receipt
