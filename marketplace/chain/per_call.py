"""Per-call payments on the chain (x402's `exact` scheme on EVM): the EIP-3009
authorization a payer signs to the marketplace, its signature checked here, and the
settler's transactions: `settlePerCall` simulated, signed, sent, and looked up again;
`creditSubmittedAuthorization` when someone else submitted the authorization first."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.types import TxParams, TxReceipt, Wei

from marketplace import errors
from marketplace.chain.market import Marketplace
from marketplace.chain.reverts import decode_revert, revert_errors
from marketplace.chain.transactions import Signer, calldata, rpc_errors, send

SETTLE = "settlePerCall(uint256,address,uint256,uint256,uint256,bytes32,bytes)"
TRANSFER_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
# keccak256 of the events the settler looks for in a transaction's receipt
AUTHORIZATION_USED = Web3.keccak(text="AuthorizationUsed(address,bytes32)")
TRANSFER = Web3.keccak(text="Transfer(address,address,uint256)")
PAID_PER_CALL = Web3.keccak(text="PaidPerCall(uint256,address,uint256,uint256,bytes32)")
# Errors that say the node did not take a transaction because of its nonce: another
# worker or replica, sending from the same settler, used it first.
# The settlement's gas limit: it measured 95k in steady state (bench.gas); a new seller's
# first earnings and a token's first fees add ~20k each. Unused gas is not paid for.
SETTLE_GAS = 200_000
NONCE_TAKEN = ("nonce too low", "replacement transaction underpriced", "already imported")
SEND_TRIES = 6
LOG_CHUNK = 2000  # blocks per log query (hosted nodes cap the range)
LOG_CHUNKS = 10
GAS_PRICE_AGE = 5.0


@dataclass(frozen=True)
class Authorization:
    """An EIP-3009 TransferWithAuthorization, as the payer signed it."""

    payer: str  # checksummed
    to: str  # checksummed
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes  # 32 bytes
    signature: bytes

    def typed_data(self, domain: tuple[str, str, int, str]) -> dict[str, Any]:
        """The EIP-712 typed data the payer signed, in `domain` (the token's)."""
        name, version, chain_id, verifying = domain
        return {
            "types": {"EIP712Domain": DOMAIN_FIELDS, "TransferWithAuthorization": TRANSFER_FIELDS},
            "primaryType": "TransferWithAuthorization",
            "domain": {
                "name": name,
                "version": version,
                "chainId": chain_id,
                "verifyingContract": verifying,
            },
            "message": {
                "from": self.payer,
                "to": self.to,
                "value": self.value,
                "validAfter": self.valid_after,
                "validBefore": self.valid_before,
                "nonce": self.nonce,
            },
        }

    def signer(self, domain: tuple[str, str, int, str]) -> str | None:
        """Who signed it (checksummed), or None when the signature does not recover.
        Only EOA signatures: a contract wallet's (ERC-1271) is checked by the chain."""
        if len(self.signature) != 65:
            return None
        try:
            message = encode_typed_data(full_message=self.typed_data(domain))
            return str(Account.recover_message(message, signature=self.signature))
        except Exception:  # a malformed signature (s too high, bad v): not the payer's
            return None


@dataclass(frozen=True)
class SignedSettlement:
    """A signed `settlePerCall` transaction, kept before it is sent (so a crash after
    sending can find it again by hash, or send the very same bytes)."""

    tx_hash: str
    raw: bytes


Outcome = Literal["ours", "arrived", "elsewhere"]


class Settler:
    """The gateway's settling account on one marketplace deployment."""

    def __init__(self, market: Marketplace, signer: Signer) -> None:
        self.market = market
        self.signer = signer
        self.w3 = market.w3
        self._price: tuple[float, int] | None = None

    @property
    def address(self) -> str:
        """The settler's address (the owner must have allowed it: `setSettler`)."""
        return self.signer.address

    def _settle_data(self, model_id: int, auth: Authorization) -> str:
        return calldata(
            SETTLE,
            model_id,
            auth.payer,
            auth.value,
            auth.valid_after,
            auth.valid_before,
            auth.nonce,
            auth.signature,
        )

    def check(self, model_id: int, auth: Authorization) -> int:
        """Simulate the settlement on the latest block (signature, window, unused nonce,
        the payer's balance, our settler right) with one bare `eth_call`: the gas limit
        to send it with, or the revert as a domain error. (eth_estimateGas runs the call
        many times over, a binary search: 4x the time on anvil.)"""
        call = {
            "from": self.signer.address,
            "to": self.market.contract.address,
            "data": self._settle_data(model_id, auth),
            "gas": hex(SETTLE_GAS),
        }
        with rpc_errors():
            answer = self.w3.provider.make_request("eth_call", [call, "latest"])  # type: ignore[arg-type]
        error = answer.get("error")
        if isinstance(error, dict):
            data = error.get("data")
            if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
                raise decode_revert(self.market.artifacts_dir, data)
            raise errors.ChainError(f"the chain refused the settlement: {error.get('message')}")
        return SETTLE_GAS

    def send(
        self,
        model_id: int,
        auth: Authorization,
        gas: int,
        record: Any,
    ) -> SignedSettlement:
        """Sign the settlement, hand it to `record` (which must store it durably), then
        send it. Another process sending from the same settler may take our nonce: then
        sign again with the next one (the refused transaction never existed).
        SettlementRefused when the node took none (the settler's gas ran out, say)."""
        data = self._settle_data(model_id, auth)
        last = ""
        for _ in range(SEND_TRIES):
            with rpc_errors(), self.signer.nonce_lock():
                tx: TxParams = {
                    "from": self.signer.address,
                    "to": self.market.contract.address,
                    "data": data,  # type: ignore[typeddict-item]
                    "gas": gas,
                    "gasPrice": Wei(self._gas_price()),
                    "nonce": self.w3.eth.get_transaction_count(self.signer.address, "pending"),
                    "chainId": self.market.deployment.chain_id,
                    "value": 0,  # type: ignore[typeddict-item]
                }
                raw = self.signer.sign(tx)
                signed = SignedSettlement(Web3.keccak(raw).to_0x_hex(), bytes(raw))
                record(signed)
                try:
                    self.broadcast(signed)
                    return signed
                except errors.ChainUnavailable:
                    raise  # the node may or may not have taken it
                except errors.ChainError as exc:
                    last = exc.message
                    if not any(m in last.lower() for m in NONCE_TAKEN):
                        raise errors.SettlementRefused(
                            f"the node refused the settlement: {last}"
                        ) from None
        raise errors.SettlementRefused(f"the settlement could not get a nonce: {last}")

    def _gas_price(self) -> int:
        """The node's gas price, read at most every GAS_PRICE_AGE seconds (one RPC less
        per paid call)."""
        now = time.monotonic()
        if self._price is None or now - self._price[0] > GAS_PRICE_AGE:
            self._price = (now, int(self.w3.eth.gas_price))
        return self._price[1]

    def broadcast(self, signed: SignedSettlement) -> None:
        """Send (or send again) a signed settlement; a node that has it already is fine."""
        try:
            with rpc_errors(), revert_errors(self.market.artifacts_dir):
                self.w3.eth.send_raw_transaction(signed.raw)
        except errors.ChainError as exc:
            if "already known" not in exc.message.lower():
                raise

    def receipt(self, tx_hash: str) -> TxReceipt | None:
        """The transaction's receipt, or None while it is not mined."""
        with rpc_errors():
            try:
                return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

    def pending(self, tx_hash: str) -> bool:
        """Whether the node still knows the (unmined) transaction."""
        with rpc_errors():
            try:
                return self.w3.eth.get_transaction(HexBytes(tx_hash)) is not None
            except TransactionNotFound:
                return False

    def wait(self, tx_hash: str, timeout: float) -> TxReceipt | None:
        """The receipt within `timeout` seconds, or None."""
        with rpc_errors():
            try:
                return self.w3.eth.wait_for_transaction_receipt(
                    HexBytes(tx_hash), timeout=timeout, poll_latency=0.02
                )
            except TimeExhausted:
                return None

    def used(self, token: str, payer: str, nonce: bytes) -> bool:
        """Whether the token has used (or seen cancelled) this authorization."""
        data = calldata("authorizationState(address,bytes32)", to_checksum_address(payer), nonce)
        return self.market.read_uint(to_checksum_address(token), data) != 0

    def outcome(self, token: str, auth: Authorization) -> tuple[Outcome, str]:
        """Where a used authorization went, from the token's logs: settled by us
        ("ours"), submitted by someone else with the price arriving here ("arrived"), or
        spent elsewhere (a payer who signed the nonce twice). And the transaction."""
        topics = [
            AUTHORIZATION_USED.to_0x_hex(),
            "0x" + HexBytes(auth.payer).rjust(32, b"\0").hex(),
            "0x" + auth.nonce.hex(),
        ]
        since = self.market.deployment.start_block  # nothing of ours is older
        logs = self._logs_back(to_checksum_address(token), topics, since)
        if not logs:
            return "elsewhere", ""  # cancelled (EIP-3009 cancelAuthorization)
        tx_hash = HexBytes(logs[0]["transactionHash"]).to_0x_hex()
        receipt = self.receipt(tx_hash)
        market = self.market.contract.address.lower()
        for log in receipt["logs"] if receipt else []:
            if (
                log["address"].lower() == market
                and HexBytes(log["topics"][0]) == PAID_PER_CALL
                and HexBytes(log["data"])[-32:] == auth.nonce
            ):
                return "ours", tx_hash
        for log in receipt["logs"] if receipt else []:
            topics_ = [HexBytes(t) for t in log["topics"]]
            if (
                log["address"].lower() == token.lower()
                and topics_[0] == TRANSFER
                and topics_[1][-20:] == HexBytes(auth.payer)
                and topics_[2][-20:] == HexBytes(market)
                and int.from_bytes(HexBytes(log["data"]), "big") == auth.value
            ):
                return "arrived", tx_hash
        return "elsewhere", tx_hash

    def _logs_back(self, address: str, topics: list[str], since_block: int) -> list[Any]:
        """Matching logs, newest LOG_CHUNK blocks first and back to `since_block` (at most
        LOG_CHUNKS chunks): hosted nodes cap a query's block range, and an authorization
        is used within minutes of its signing, so the newest blocks hold it."""
        with rpc_errors(), revert_errors(self.market.artifacts_dir):
            end = int(self.w3.eth.block_number)
            for _ in range(LOG_CHUNKS):
                start = max(end - LOG_CHUNK + 1, since_block, 0)
                found = self.w3.eth.get_logs(
                    {"address": address, "topics": topics, "fromBlock": start, "toBlock": end}  # type: ignore[typeddict-item]
                )
                if found or start <= max(since_block, 0):
                    return list(found)
                end = start - 1
        return []

    def chain_time(self) -> int:
        """The latest block's timestamp: what an authorization's window is checked by."""
        with rpc_errors():
            return int(self.w3.eth.get_block("latest")["timestamp"])

    def credit_submitted(self, model_id: int, auth: Authorization, timeout: float) -> str:
        """Credit the seller for an authorization someone else submitted to the token
        (the price arrived here): the transaction hash."""
        receipt = send(
            self.w3,
            self.market.contract.functions.creditSubmittedAuthorization(
                model_id, auth.payer, auth.value, auth.nonce
            ),
            self.signer,
            self.market.artifacts_dir,
            timeout=timeout,
        )
        return HexBytes(receipt["transactionHash"]).to_0x_hex()


REFUSALS = {
    "AuthorizationAlreadyUsed": "this authorization was used already",
    "AuthorizationExpired": "the authorization has expired",
    "AuthorizationNotYetValid": "the authorization is not valid yet",
    "InvalidAuthorizationSignature": "the signature is not the payer's over this authorization",
    "ERC20InsufficientBalance": "the payer's balance is below the authorized amount",
    "EnforcedPause": "the marketplace is paused",
    "NotSettler": "this gateway's settler is not allowed to settle (its operator must fix it)",
}


def refusal(exc: errors.ContractRevert) -> str:
    """Why the chain refused a settlement, in words for the payer."""
    return REFUSALS.get(exc.revert_name or "", exc.message)
