"""Deploy ModelMarketplace, its UsageAnchors (and, unless TOKEN is given, MarketToken) to
any chain.

    DEPLOYER_PRIVATE_KEY=0x... contracts/brownie.sh deploy http://host:8545 [out.json]

Environment: DEPLOYER_PRIVATE_KEY (required; never printed), FEE_BPS (default 250),
TREASURY (default: the deployer), TOKEN (an existing ERC-20 to allowlist instead of
deploying MarketToken), DEPLOYMENT_OUT (where to write the deployment record, the same
JSON that marketplace/chain/artifacts.py's Deployment reads).
"""

import json
import os
import sys

from brownie import MarketToken, ModelMarketplace, UsageAnchors, accounts, chain


def main():
    key = os.environ.get("DEPLOYER_PRIVATE_KEY")
    if not key:
        sys.exit("error: DEPLOYER_PRIVATE_KEY is not set")
    deployer = accounts.add(key)
    del key
    fee_bps = int(os.environ.get("FEE_BPS", "250"))
    treasury = os.environ.get("TREASURY") or deployer.address
    tx_args = {"from": deployer}

    token_address = os.environ.get("TOKEN")
    if token_address:
        start_block = chain.height
    else:
        token = MarketToken.deploy(deployer, 10**27, tx_args)
        token_address = token.address
        start_block = token.tx.block_number
    market = ModelMarketplace.deploy(deployer, treasury, fee_bps, tx_args)
    market.setTokenAllowed(token_address, True, tx_args)
    # where the gateways anchor their usage-receipt batches, for this marketplace
    anchors = UsageAnchors.deploy(market.address, tx_args)

    record = {
        "chain_id": chain.id,
        "marketplace": market.address,
        "anchors": anchors.address,
        "token": token_address,
        "start_block": start_block,
        "owner": deployer.address,
        "treasury": treasury,
    }
    text = json.dumps(record, indent=2) + "\n"
    out = os.environ.get("DEPLOYMENT_OUT")
    if out:
        with open(out, "w") as fh:
            fh.write(text)
        print(f"deployment record written to {out}")
    print(text)
