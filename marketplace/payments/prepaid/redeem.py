"""Redeem a purchase transaction for credits: the receipt must prove a purchase on our
marketplace, on our chain, confirmed, by the signed-in caller. Each check failing has
its own error code; a redeemed receipt credits once (the indexer shares the rule)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hexbytes import HexBytes
from sqlalchemy.orm import Session
from web3 import Web3
from web3.exceptions import TransactionNotFound

from marketplace import errors
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import rpc_errors
from marketplace.payments.prepaid import ledger

TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Redeemed:
    """What a receipt credited."""

    tx_hash: str
    model_id: int
    calls: int
    remaining: int


def redeem(
    session: Session,
    w3: Web3,
    market: Marketplace,
    tx_hash: str,
    caller: str,
    *,
    confirmations: int,
) -> list[Redeemed]:
    """Credit the caller for every `Purchased` event in `tx_hash` whose buyer they are."""
    if not isinstance(tx_hash, str) or not TX_HASH.fullmatch(tx_hash):
        raise errors.BadRequest("tx_hash: a 0x-prefixed 32-byte hex transaction hash")
    with rpc_errors():
        if w3.eth.chain_id != market.deployment.chain_id:
            raise errors.ReceiptWrongChain(
                f"the gateway's chain is {w3.eth.chain_id}, the marketplace's is"
                f" {market.deployment.chain_id}"
            )
        try:
            receipt = w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            tx = w3.eth.get_transaction(HexBytes(tx_hash))
        except TransactionNotFound:
            raise errors.ReceiptNotFound(
                f"no mined transaction {tx_hash} on chain {market.deployment.chain_id}"
            ) from None
        head = w3.eth.block_number
    if "chainId" in tx and int(tx["chainId"]) != market.deployment.chain_id:
        raise errors.ReceiptWrongChain(
            f"transaction {tx_hash} was signed for chain {tx['chainId']}"
        )
    if receipt["status"] != 1:
        raise errors.ReceiptReverted(f"transaction {tx_hash} reverted; it bought nothing")
    ours = market.contract.address.lower()
    if not any(str(log["address"] or "").lower() == ours for log in receipt["logs"]):
        raise errors.ReceiptWrongContract(
            f"transaction {tx_hash} holds no event of the marketplace {market.contract.address}"
        )
    have = head - receipt["blockNumber"]
    if have < confirmations:
        raise errors.ReceiptUnconfirmed(
            f"transaction {tx_hash} has {have} confirmation(s); {confirmations} are needed,"
            " try again shortly"
        )
    # Only logs the marketplace itself emitted count: a look-alike `Purchased` from any
    # other contract in the same transaction is never read.
    events = market.purchases(receipt)
    if not events:
        raise errors.ReceiptNotPurchase(f"transaction {tx_hash} holds no purchase")
    mine = [e for e in events if e.args["buyer"] == caller.lower()]
    if not mine:
        raise errors.ReceiptNotBuyer(
            f"the purchase in {tx_hash} was made by another address, not {caller}"
        )
    redeemed = []
    for event in mine:
        model_id = int(event.args["modelId"])
        calls = int(event.args["calls"])
        new = ledger.credit(
            session,
            ledger.PurchaseRecord(
                tx_hash=event.tx_hash,
                log_index=event.log_index,
                buyer=event.args["buyer"],
                model_id=model_id,
                calls=calls,
                amount=int(event.args["amount"]),
                fee=int(event.args["fee"]),
                block_number=event.block_number,
                block_hash=event.block_hash,
                source="receipt",
            ),
        )
        if new:
            redeemed.append(
                Redeemed(tx_hash, model_id, calls, ledger.remaining(session, caller, model_id))
            )
    if not redeemed:
        raise errors.ReceiptAlreadyRedeemed(
            f"transaction {tx_hash} was already credited; nothing changed"
        )
    return redeemed
