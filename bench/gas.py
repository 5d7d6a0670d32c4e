"""Gas of the marketplace's calls beside a bare OpenZeppelin ERC-20 transferFrom,
measured on a fresh anvil in one run.

    make bench            # or: .venv/bin/python -m bench.gas

Every figure is a transaction's gasUsed (21,000 intrinsic gas included), measured in
steady state (balances and listing slots already non-zero) unless the row says "first".
A second table spreads a purchase of 1, 10 and 100 calls over its calls: the gas per
paid call, for `purchase` and `purchaseWithPermit`, beside x402's `exact` (one
`settlePerCall` per call: the payer's EIP-3009 authorization, the seller credited).

The goals: purchase <= 1.5 x (bare transferFrom + its Purchased event) (issue 11, "the
pull-payment floor measured"); settlePerCall <= 1.5 x a bare transferWithAuthorization
(what x402's own facilitator sends, paying the seller directly, no fee split and no
per-model record) (issue 14); a gateway's usage-receipt batch anchored on-chain
(`UsageAnchors.anchor`, one call a batch) costs <= 10 gas per call it covers at 10,000
calls a batch.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from eth_account import Account
from eth_utils import keccak

from marketplace.chain.artifacts import load_artifact
from marketplace.chain.market import Marketplace, deploy_marketplace
from marketplace.chain.per_call import Authorization
from marketplace.chain.transactions import connect, deploy, send
from marketplace.config import Settings
from marketplace.devstack.anvil import dev_key, dev_signers, start_anvil

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # a real CIDv1, 59 chars
PRICE = 2 * 10**16
# fixed, so the permit's calldata (deadline and signature bytes) is the same every run
DEADLINE = 4_102_444_800  # 2100-01-01
GOAL_PURCHASE = 1.5
GOAL_SETTLE = 1.5
CALLS = (1, 10, 100)  # the purchase sizes of the gas-per-paid-call table
ANCHOR_BATCH = 10_000  # calls a usage-receipt batch covers: one anchor() per batch
GOAL_ANCHOR_PER_CALL = 10
# fixed, so anchor()'s calldata (and so its gas) is the same every run
ANCHOR_ROOT = keccak(text="bench.gas usage batch 1")


def log_gas(log: dict) -> int:
    """Gas of one LOG opcode as the yellow paper prices it: 375 + 375/topic + 8/byte."""
    return 375 + 375 * len(log["topics"]) + 8 * len(bytes(log["data"]))


def main() -> int:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    node = start_anvil(settings.anvil_bin)
    try:
        w3 = connect(node.rpc_url)
        owner, seller, buyer, spender, permit_buyer, x402_payer, settler = dev_signers(7)
        art = settings.artifacts_dir
        dep = deploy_marketplace(w3, owner, art, fee_bps=250)
        m = Marketplace(w3, dep, art)
        for who in (seller, buyer, spender, permit_buyer, x402_payer):
            send(w3, m.token.functions.mint(who.address, 10**24), owner, art)

        def gas(receipt: dict) -> int:
            return int(receipt["gasUsed"])

        rows: list[tuple[str, int]] = []

        # The baseline: OZ ERC20 transferFrom between two holders, by an approved spender.
        send(w3, m.token.functions.approve(spender.address, 10**24), buyer, art)
        tf = m.token.functions.transferFrom(buyer.address, seller.address, PRICE)
        gas(send(w3, tf, spender, art))  # warm-up: same slots as the measured one
        transfer = gas(send(w3, tf, spender, art))
        rows.append(("ERC20 transferFrom (bare OZ, baseline)", transfer))

        first_list = gas(m.list_model(seller, CID, CID, PRICE)[1])
        model_id, receipt = m.list_model(seller, CID, CID, PRICE)
        rows.append(("listModel (first ever)", first_list))
        rows.append(("listModel", gas(receipt)))

        m.approve(buyer, 10**24)
        rows.append(
            ("purchase (first for the seller)", gas(m.purchase(buyer, model_id, 100, PRICE)))
        )
        purchase_receipt = m.purchase(buyer, model_id, 100, PRICE)
        purchase = gas(purchase_receipt)
        rows.append(("purchase", purchase))

        deadline = DEADLINE
        m.purchase_with_permit(permit_buyer, model_id, 10, PRICE, deadline=deadline)
        rows.append(
            (
                "purchaseWithPermit",
                gas(m.purchase_with_permit(permit_buyer, model_id, 10, PRICE, deadline=deadline)),
            )
        )

        # Gas per paid call: the same steady state (the seller's earnings and both buyers'
        # balances, nonce and allowance slots already used), before setPrice and withdraw.
        sizes: list[tuple[int, int, int]] = []  # (calls, purchase gas, permit gas)
        for calls in CALLS:
            bought = gas(m.purchase(buyer, model_id, calls, PRICE))
            permitted = gas(
                m.purchase_with_permit(permit_buyer, model_id, calls, PRICE, deadline=deadline)
            )
            sizes.append((calls, bought, permitted))
        # x402 exact: one settlement per call, sent (and paid for) by the gateway's settler
        send(w3, m.contract.functions.setSettler(settler.address, True), owner, art)
        domain = m.eip712_domain()

        def authorization(to: str) -> Authorization:
            now = int(time.time())
            auth = Authorization(x402_payer.address, to, PRICE, 0, now + 3600, os.urandom(32), b"")
            signed = Account.sign_typed_data(dev_key(5), full_message=auth.typed_data(domain))
            return dataclasses.replace(auth, signature=bytes(signed.signature))

        def settle() -> int:
            a = authorization(m.contract.address)
            call = m.contract.functions.settlePerCall(
                model_id, a.payer, a.value, a.valid_after, a.valid_before, a.nonce, a.signature
            )
            return gas(send(w3, call, settler, art))

        def transfer_with_authorization() -> int:
            a = authorization(seller.address)
            call = m.token.functions.transferWithAuthorization(
                a.payer, a.to, a.value, a.valid_after, a.valid_before, a.nonce, a.signature
            )
            return gas(send(w3, call, spender, art))

        settle()  # warm-up: the payer's balance and the seller's earnings slots are used
        settled = settle()
        transfer_with_authorization()
        bare_twa = transfer_with_authorization()
        rows.append(("token transferWithAuthorization (x402's own facilitator)", bare_twa))
        rows.append(("settlePerCall (x402 exact, one call)", settled))
        rows.append(("setPrice", gas(m.set_price(seller, model_id, PRICE + 1))))
        rows.append(("withdraw", gas(m.withdraw(seller))))

        # A gateway anchors a batch's receipt root: every root is a fresh slot, so one
        # call is the steady state. The settler stands in for the gateway's key.
        anchors_art = load_artifact(art, "UsageAnchors")
        anchors_address, _ = deploy(w3, anchors_art, owner, art, m.contract.address)
        anchors = w3.eth.contract(address=anchors_address, abi=anchors_art.abi)
        anchored = gas(
            send(w3, anchors.functions.anchor(1, ANCHOR_ROOT, ANCHOR_BATCH), settler, art)
        )
        rows.append(("anchor (UsageAnchors, one batch root, fresh)", anchored))

        purchased_log = next(
            log for log in purchase_receipt["logs"] if log["address"] == m.contract.address
        )
        event = log_gas(purchased_log)
        baseline = transfer + event
        rows.append((f"baseline: transferFrom + one Purchased event ({event} gas)", baseline))
    finally:
        node.stop()

    width = max(len(name) for name, _ in rows)
    print(f"{'call':<{width}}  {'gas':>9}  {'x transferFrom':>14}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 14}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>9,}  {value / transfer:>14.2f}")

    print()
    print("gas per paid call: one purchase of N calls, its gas / N")
    head = (
        "calls",
        "purchase gas",
        "gas per call",
        "x transferFrom",
        "withPermit gas",
        "gas per call",
        "x transferFrom",
    )
    print("  ".join(f"{h:>{len(h)}}" for h in head))
    print("  ".join("-" * len(h) for h in head))
    for calls, bought, permitted in sizes:
        cells = (
            f"{calls:,}",
            f"{bought:,}",
            f"{bought / calls:,.0f}",
            f"{bought / calls / transfer:.3f}",
            f"{permitted:,}",
            f"{permitted / calls:,.0f}",
            f"{permitted / calls / transfer:.3f}",
        )
        print("  ".join(f"{c:>{len(h)}}" for c, h in zip(cells, head, strict=True)))

    print()
    print("which is cheaper per call: x402 exact (one settlePerCall a call) vs prepaid")
    print(f"  x402 exact: {settled:,} gas every call, paid by the gateway's settler")
    for calls, bought, _ in sizes:
        per = bought / calls
        cheaper = "prepaid" if per < settled else "x402"
        print(
            f"  prepaid, {calls:>3} calls a purchase: {per:>9,.0f} gas a call"
            f" ({settled / per:.1f}x less than x402: {cheaper} is cheaper)"
        )
    even = next((c for c, b, _ in sizes if b / c < settled), None)
    print(f"  prepaid is cheaper from {even} call(s) a purchase on" if even else "")

    ratio = purchase / baseline
    print()
    print(f"purchase spends {purchase - baseline:,} gas above transferFrom + its event")
    verdict = "met" if ratio <= GOAL_PURCHASE else "missed"
    print(
        f"goal: purchase_vs_transfer_plus_event = {ratio:.3f} (target <= {GOAL_PURCHASE}) {verdict}"
    )
    settle_ratio = settled / bare_twa
    verdict = "met" if settle_ratio <= GOAL_SETTLE else "missed"
    print(
        f"goal: settle_per_call_vs_transfer_with_authorization = {settle_ratio:.3f}"
        f" (target <= {GOAL_SETTLE}) {verdict}"
    )
    anchor_per_call = anchored / ANCHOR_BATCH
    verdict = "met" if anchor_per_call <= GOAL_ANCHOR_PER_CALL else "missed"
    print(
        f"goal: anchoring gas per call at {ANCHOR_BATCH} calls a batch = {anchor_per_call:.2f}"
        f" (target <= {GOAL_ANCHOR_PER_CALL}) {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
