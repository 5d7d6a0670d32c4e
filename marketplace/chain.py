"""web3.py bindings: contract artifacts, transactions signed with a local key, receipts,
events, and contract custom errors turned into domain errors with a human message."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from pydantic import SecretStr
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    Web3RPCError,
)
from web3.types import TxParams, TxReceipt, Wei

from marketplace import errors
from marketplace.events import Event, EventDecoder

CONTRACT_NAMES = ("ModelMarketplace", "MarketToken")


# ----------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: its ABI, creation bytecode and the compiler that made it."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler: str


def load_artifact(artifacts_dir: Path, name: str) -> Artifact:
    """Read `<artifacts_dir>/<name>.json` as written by `contracts/compile.py`."""
    path = artifacts_dir / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise errors.ConfigurationError(f"contract artifact {path} is missing") from exc
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=data["bytecode"],
        compiler=data["compiler"]["version"],
    )


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on which chain; written once by a deploy."""

    chain_id: int
    marketplace: str
    token: str
    start_block: int
    owner: str
    treasury: str

    def save(self, path: Path) -> None:
        """Write the record atomically (temp file + rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        """Read a record written by `save`."""
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError as exc:
            raise errors.ConfigurationError(
                f"no deployment record at {path}; deploy first (make run does)"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise errors.ConfigurationError(f"deployment record {path} is unreadable") from exc


# -------------------------------------------------------------------- signer


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


def connect(rpc_url: str, timeout: float = 10.0) -> Web3:
    """A Web3 on `rpc_url`; raises ChainUnavailable when nothing answers there."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    with rpc_errors(public_origin(rpc_url)):
        w3.eth.chain_id  # noqa: B018 - the first request proves the endpoint answers
    return w3


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


# -------------------------------------------------------------- revert decoding

# name -> (domain error class, message template over the decoded arguments)
_REVERTS: dict[str, tuple[type[errors.ContractRevert], Callable[..., str]]] = {
    "UnknownModel": (errors.ModelNotFound, lambda m: f"model {m} does not exist"),
    "NotSeller": (
        errors.NotSeller,
        lambda m, caller, seller: (
            f"only the seller of model {m} ({seller}) can change it, not {caller}"
        ),
    ),
    "ListingInactive": (errors.ListingInactive, lambda m: f"model {m} is delisted"),
    "ListingActive": (errors.ListingActive, lambda m: f"model {m} is already listed"),
    "TokenNotAllowed": (
        errors.TokenNotAllowed,
        lambda t: f"token {t} is not on the marketplace's allowlist",
    ),
    "PriceAboveMax": (
        errors.PriceAboveMax,
        lambda price, mx: (
            f"the price per call is {price}, above the maximum of {mx} you agreed to pay"
        ),
    ),
    "InvalidPrice": (
        errors.InvalidPrice,
        lambda p: f"a price per call must be above 0 and below 2**96, not {p}",
    ),
    "ZeroCalls": (errors.InvalidArgument, lambda: "a purchase must be for at least one call"),
    "TooManyCalls": (
        errors.InvalidArgument,
        lambda calls, mx: f"a purchase may buy at most {mx} calls, not {calls}",
    ),
    "EmptyCid": (errors.InvalidArgument, lambda: "the model and metadata CIDs must not be empty"),
    "ZeroAddress": (errors.InvalidArgument, lambda: "the zero address is not allowed here"),
    "FeeAboveCap": (
        errors.FeeAboveCap,
        lambda fee, cap: f"a fee of {fee} bps is above the hard cap of {cap} bps",
    ),
    "NothingToWithdraw": (
        errors.NothingToWithdraw,
        lambda acct, token: f"{acct} has nothing to withdraw in token {token}",
    ),
    "EnforcedPause": (
        errors.MarketplacePaused,
        lambda: "the marketplace is paused: no listings or purchases (withdrawals still work)",
    ),
    "ExpectedPause": (errors.InvalidArgument, lambda: "the marketplace is not paused"),
    "OwnableUnauthorizedAccount": (
        errors.NotOwner,
        lambda acct: f"only the marketplace owner can do this, and {acct} is not the owner",
    ),
    "OwnableInvalidOwner": (errors.InvalidArgument, lambda o: f"{o} cannot be the owner"),
    "ERC20InsufficientBalance": (
        errors.InsufficientFunds,
        lambda who, have, need: f"{who} holds {have} tokens but {need} are needed",
    ),
    "ERC20InsufficientAllowance": (
        errors.InsufficientAllowance,
        lambda spender, have, need: (
            f"the marketplace ({spender}) may spend {have} of your tokens but {need} are"
            " needed: approve it first"
        ),
    ),
    "ERC2612ExpiredSignature": (
        errors.PermitInvalid,
        lambda deadline: f"the permit expired at {deadline}",
    ),
    "ERC2612InvalidSigner": (
        errors.PermitInvalid,
        lambda signer, owner: f"the permit was signed by {signer}, not by {owner}",
    ),
    "SafeERC20FailedOperation": (
        errors.InsufficientFunds,
        lambda token: f"the token {token} refused the transfer",
    ),
}


@cache
def _error_abis(artifacts_dir: Path) -> dict[bytes, tuple[str, list[str]]]:
    """selector -> (error name, argument types), from every artifact's ABI."""
    table: dict[bytes, tuple[str, list[str]]] = {}
    for name in CONTRACT_NAMES:
        for item in load_artifact(artifacts_dir, name).abi:
            if item.get("type") != "error":
                continue
            types = [arg["type"] for arg in item["inputs"]]
            selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
            table[selector] = (item["name"], types)
    return table


def _format_arg(value: object) -> object:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value


def decode_revert(artifacts_dir: Path, data: str | bytes) -> errors.ContractRevert:
    """The domain error for a contract's revert data (custom error, Error(string), Panic)."""
    raw = HexBytes(data)
    selector, payload = bytes(raw[:4]), bytes(raw[4:])
    known = _error_abis(artifacts_dir).get(selector)
    if known is None:
        return errors.ContractRevert(f"the contract reverted (data {raw.to_0x_hex()[:74]})")
    name, types = known
    try:
        args = tuple(_format_arg(a) for a in abi_decode(types, payload))
    except Exception:
        return errors.ContractRevert(f"the contract reverted with a malformed {name} error", name)
    cls, template = _REVERTS.get(name, (errors.ContractRevert, None))
    message = template(*args) if template else f"the contract reverted: {name}{args}"
    return cls(message, name, args)


@contextmanager
def revert_errors(artifacts_dir: Path) -> Iterator[None]:
    """Turn web3's revert exceptions into domain errors with a human message."""
    try:
        yield
    except ContractCustomError as exc:
        raise decode_revert(artifacts_dir, str(exc.data)) from None
    except ContractPanicError as exc:
        raise errors.ContractRevert(f"the contract panicked: {exc.message}") from None
    except ContractLogicError as exc:
        raise errors.ContractRevert(f"the contract reverted: {exc.message}") from None
    except Web3RPCError as exc:
        raise errors.ChainError(f"the chain refused the request: {exc.message}") from None


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


# -------------------------------------------------------------- the contracts


def deploy_marketplace(
    w3: Web3,
    signer: Signer,
    artifacts_dir: Path,
    *,
    fee_bps: int,
    treasury: str | None = None,
    token_supply: int = 10**27,
    timeout: float = 120.0,
) -> Deployment:
    """Deploy MarketToken and ModelMarketplace, allowlist the token; the signer owns both."""
    token_art = load_artifact(artifacts_dir, "MarketToken")
    market_art = load_artifact(artifacts_dir, "ModelMarketplace")
    treasury = treasury or signer.address
    token, receipt = deploy(
        w3, token_art, signer, artifacts_dir, signer.address, token_supply, timeout=timeout
    )
    market, _ = deploy(
        w3, market_art, signer, artifacts_dir, signer.address, treasury, fee_bps, timeout=timeout
    )
    contract = w3.eth.contract(address=market, abi=market_art.abi)
    send(
        w3, contract.functions.setTokenAllowed(token, True), signer, artifacts_dir, timeout=timeout
    )
    return Deployment(
        chain_id=w3.eth.chain_id,
        marketplace=market,
        token=token,
        start_block=receipt["blockNumber"],
        owner=signer.address,
        treasury=treasury,
    )


@dataclass(frozen=True)
class Listing:
    """A listing as the contract holds it."""

    model_id: int
    seller: str
    active: bool
    token: str
    price_per_call: int
    model_cid: str
    metadata_cid: str


class Marketplace:
    """Typed calls on one deployment of ModelMarketplace and its token.

    Every state-changing call takes the Signer that pays for it; reverts come back as
    domain errors (ModelNotFound, NotSeller, PriceAboveMax, MarketplacePaused, ...).
    """

    def __init__(
        self, w3: Web3, deployment: Deployment, artifacts_dir: Path, *, timeout: float = 120.0
    ) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.artifacts_dir = artifacts_dir
        self.timeout = timeout
        abi = load_artifact(artifacts_dir, "ModelMarketplace").abi
        self.contract = w3.eth.contract(
            address=to_checksum_address(deployment.marketplace), abi=abi
        )
        self.events = EventDecoder(abi, self.contract.address)
        self._token_abi = load_artifact(artifacts_dir, "MarketToken").abi
        self._domains: dict[str, Any] = {}  # token -> its EIP-712 domain
        self._tokens: dict[str, Contract] = {}
        self.token = self.token_contract(deployment.token)

    def token_contract(self, address: str) -> Contract:
        """An ERC-20 (with permit) at `address` (built once per address: ~2 ms each)."""
        address = to_checksum_address(address)
        contract = self._tokens.get(address)
        if contract is None:
            contract = self._tokens[address] = self.w3.eth.contract(
                address=address, abi=self._token_abi
            )
        return contract

    def _read_uint(self, to: str, data: str) -> int:
        """A uint256 view by a bare `eth_call` (web3's call path adds ~5 ms of formatting
        and checks; unauthenticated purchase preparation makes this call)."""
        with rpc_errors():
            answer = self.w3.provider.make_request(
                "eth_call",  # type: ignore[arg-type]
                [{"to": to, "data": data}, "latest"],
            )
        if "error" in answer or not isinstance(answer.get("result"), str):
            raise errors.ChainError(f"the chain refused a read of {to}")
        return int(answer["result"], 16)

    def _send(self, call: ContractFunction, signer: Signer) -> TxReceipt:
        return send(self.w3, call, signer, self.artifacts_dir, timeout=self.timeout)

    def _call(self, call: ContractFunction) -> Any:
        with rpc_errors(), revert_errors(self.artifacts_dir):
            return call.call()

    # sellers

    def list_model(
        self,
        signer: Signer,
        model_cid: str,
        metadata_cid: str,
        price_per_call: int,
        token: str | None = None,
    ) -> tuple[int, TxReceipt]:
        """List a model; returns (model id, receipt)."""
        receipt = self._send(
            self.contract.functions.listModel(
                model_cid,
                metadata_cid,
                to_checksum_address(token or self.deployment.token),
                price_per_call,
            ),
            signer,
        )
        (event,) = self.events.decode(receipt["logs"], "ModelListed")
        return int(event.args["modelId"]), receipt

    def set_price(self, signer: Signer, model_id: int, price_per_call: int) -> TxReceipt:
        """Change a listing's price (its seller only)."""
        return self._send(self.contract.functions.setPrice(model_id, price_per_call), signer)

    def delist(self, signer: Signer, model_id: int) -> TxReceipt:
        """Stop selling a listing (its seller only)."""
        return self._send(self.contract.functions.delist(model_id), signer)

    def relist(self, signer: Signer, model_id: int) -> TxReceipt:
        """Sell a delisted listing again (its seller only)."""
        return self._send(self.contract.functions.relist(model_id), signer)

    def withdraw(self, signer: Signer, token: str | None = None) -> TxReceipt:
        """Withdraw the signer's earnings in `token`."""
        address = to_checksum_address(token or self.deployment.token)
        return self._send(self.contract.functions.withdraw(address), signer)

    # buyers

    def approve(self, signer: Signer, amount: int, token: str | None = None) -> TxReceipt:
        """Let the marketplace pull `amount` of `token` from the signer."""
        erc20 = self.token_contract(token) if token else self.token
        return self._send(erc20.functions.approve(self.contract.address, amount), signer)

    def purchase(
        self, signer: Signer, model_id: int, calls: int, max_price_per_call: int
    ) -> TxReceipt:
        """Buy `calls` calls; the allowance must already be in place."""
        return self._send(
            self.contract.functions.purchase(model_id, calls, max_price_per_call), signer
        )

    def permit_typed_data(
        self, owner: str, value: int, deadline: int, token: str | None = None
    ) -> dict[str, Any]:
        """The EIP-2612 Permit typed data a wallet signs for the marketplace to spend `value`."""
        erc20 = self.token_contract(token) if token else self.token
        with rpc_errors(), revert_errors(self.artifacts_dir):  # a token without ERC-5267
            domain = self._domains.get(erc20.address)
            if domain is None:  # fixed at the token's deployment: one read per process
                domain = self._domains[erc20.address] = erc20.functions.eip712Domain().call()
            _, name, version, chain_id, verifying, _, _ = domain
        nonce = self._read_uint(
            erc20.address, calldata("nonces(address)", to_checksum_address(owner))
        )
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ],
            },
            "primaryType": "Permit",
            "domain": {
                "name": name,
                "version": version,
                "chainId": chain_id,
                "verifyingContract": verifying,
            },
            "message": {
                "owner": to_checksum_address(owner),
                "spender": self.contract.address,
                "value": value,
                "nonce": nonce,
                "deadline": deadline,
            },
        }

    def purchase_with_permit(
        self,
        signer: Signer,
        model_id: int,
        calls: int,
        max_price_per_call: int,
        *,
        deadline: int,
    ) -> TxReceipt:
        """Buy with a permit signed here by the buyer's own key (no separate approve)."""
        listing = self.listing(model_id)
        value = calls * listing.price_per_call
        typed = self.permit_typed_data(signer.address, value, deadline, listing.token)
        v, r, s = signer.sign_typed_data(typed)
        return self._send(
            self.contract.functions.purchaseWithPermit(
                model_id, calls, max_price_per_call, value, deadline, v, r, s
            ),
            signer,
        )

    # owner

    def pause(self, signer: Signer) -> TxReceipt:
        """Stop listings and purchases (owner only)."""
        return self._send(self.contract.functions.pause(), signer)

    def unpause(self, signer: Signer) -> TxReceipt:
        """Undo `pause` (owner only)."""
        return self._send(self.contract.functions.unpause(), signer)

    def set_fee(self, signer: Signer, fee_bps: int) -> TxReceipt:
        """Set the protocol fee (owner only, capped by the contract)."""
        return self._send(self.contract.functions.setFee(fee_bps), signer)

    # views

    def listing(self, model_id: int) -> Listing:
        """The listing `model_id`; ModelNotFound if there is none."""
        seller, active, token, price, model_cid, metadata_cid = self._call(
            self.contract.functions.getListing(model_id)
        )
        return Listing(model_id, seller, active, token, price, model_cid, metadata_cid)

    def earnings(self, seller: str, token: str | None = None) -> int:
        """What `seller` can withdraw in `token`."""
        return int(
            self._call(
                self.contract.functions.earnings(
                    to_checksum_address(seller), to_checksum_address(token or self.deployment.token)
                )
            )
        )

    def token_balance(self, account: str, token: str | None = None) -> int:
        """`account`'s balance of `token`."""
        erc20 = self.token_contract(token) if token else self.token
        return int(self._call(erc20.functions.balanceOf(to_checksum_address(account))))

    def purchases(self, receipt: TxReceipt) -> list[Event]:
        """The Purchased events the marketplace emitted in `receipt`."""
        return self.events.decode(receipt["logs"], "Purchased")
