"""The embedded default's deployment: reuse the recorded one if it is live, else deploy
the contracts and fund the demo accounts; `running` keeps the chain up for a block."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from eth_utils.address import to_checksum_address
from web3 import Web3

from marketplace import errors
from marketplace.chain.artifacts import Deployment
from marketplace.chain.endpoint import runtime_path
from marketplace.chain.market import Marketplace, deploy_marketplace
from marketplace.chain.transactions import Signer, connect, rpc_errors, send
from marketplace.config import Settings
from marketplace.devstack.anvil import (
    DEMO_ACCOUNTS,
    DEMO_TOKENS,
    SETTLER_ACCOUNT,
    Anvil,
    dev_signers,
    start_anvil,
)


def deployment_is_live(w3: Web3, deployment: Deployment) -> bool:
    """True when `deployment` is on this chain: same chain id, code at every address (a
    record from before UsageAnchors is not: the embedded default deploys anew)."""
    if deployment.anchors is None:
        return False
    with rpc_errors():
        if w3.eth.chain_id != deployment.chain_id:
            return False
        return all(
            len(w3.eth.get_code(to_checksum_address(a))) > 0
            for a in (deployment.marketplace, deployment.token, deployment.anchors)
        )


def ensure_deployment(
    w3: Web3,
    settings: Settings,
    signers: list[Signer],
    *,
    progress: Callable[[str], None] = lambda _msg: None,
) -> tuple[Deployment, bool]:
    """Reuse the recorded deployment if it is live on `w3`, else deploy and fund the
    demo accounts. Returns (deployment, newly_deployed)."""
    path = settings.deployment_path
    if path.exists():
        recorded = Deployment.load(path)
        if deployment_is_live(w3, recorded):
            return recorded, False
        progress(f"the deployment in {path} is not on this chain; deploying anew")
    owner, *demo = signers
    settler = demo.pop() if len(demo) > DEMO_ACCOUNTS - 1 else None
    progress("deploying MarketToken and ModelMarketplace")
    deployment = deploy_marketplace(
        w3, owner, settings.artifacts_dir, fee_bps=settings.fee_bps, timeout=settings.tx_timeout
    )
    market = Marketplace(w3, deployment, settings.artifacts_dir, timeout=settings.tx_timeout)
    for signer in demo:
        send(
            w3,
            market.token.functions.mint(signer.address, DEMO_TOKENS),
            owner,
            settings.artifacts_dir,
            timeout=settings.tx_timeout,
        )
    progress(f"funded {len(demo)} demo accounts with {DEMO_TOKENS // 10**18:,} MMT each")
    if settler is not None:
        send(
            w3,
            market.contract.functions.setSettler(settler.address, True),
            owner,
            settings.artifacts_dir,
            timeout=settings.tx_timeout,
        )
        progress(f"allowed {settler.address} to settle x402 payments")
    deployment.save(path)
    return deployment, True


@contextmanager
def running(
    settings: Settings, *, progress: Callable[[str], None] = lambda _msg: None
) -> Iterator[tuple[str, Deployment, bool]]:
    """The embedded chain for as long as the block runs: (rpc_url, deployment, new)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    anvil: Anvil | None = None
    try:
        if settings.rpc_url:
            rpc_url = settings.rpc_url
            if settings.private_key is None:
                raise errors.ConfigurationError(
                    "MODELMARKET_PRIVATE_KEY is needed to deploy to MODELMARKET_RPC_URL"
                )
            signers = [Signer(settings.private_key)]
        else:
            anvil = start_anvil(
                settings.anvil_bin,
                state_file=settings.data_dir / "anvil-state.json",
                port=settings.anvil_port,
                log_path=settings.data_dir / "anvil.log",
            )
            rpc_url = anvil.rpc_url
            progress(f"anvil is up on {rpc_url} (pid {anvil.process.pid})")
            signers = dev_signers(SETTLER_ACCOUNT + 1)
        w3 = connect(rpc_url, timeout=settings.rpc_timeout, retries=settings.rpc_retries)
        deployment, new = ensure_deployment(w3, settings, signers, progress=progress)
        if anvil is not None:
            # other processes (`modelmarket indexer`) find the embedded chain here
            runtime_path(settings).write_text(json.dumps({"rpc_url": rpc_url}))
        yield rpc_url, deployment, new
    finally:
        if anvil is not None:
            runtime_path(settings).unlink(missing_ok=True)
            anvil.stop()
