"""The brownie deploy script against a real anvil it did not start, read back by chain.py."""

from __future__ import annotations

import os
import subprocess

import pytest

from marketplace import chain, devstack
from marketplace.config import PROJECT_ROOT
from tests.conftest import ANVIL_BIN, ARTIFACTS


@pytest.mark.slow
def test_deploy_script_to_any_rpc_url(tmp_path):
    node = devstack.start_anvil(ANVIL_BIN)
    try:
        deployer = devstack.dev_signers(2)[1]
        key = devstack.dev_key(1)
        out = tmp_path / "deployment.json"
        proc = subprocess.run(
            [str(PROJECT_ROOT / "contracts/brownie.sh"), "deploy", node.rpc_url, str(out)],
            env={**os.environ, "DEPLOYER_PRIVATE_KEY": key, "FEE_BPS": "100"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert key[2:] not in proc.stdout + proc.stderr
        dep = chain.Deployment.load(out)
        assert dep.owner == deployer.address and dep.chain_id == devstack.ANVIL_CHAIN_ID
        market = chain.Marketplace(chain.connect(node.rpc_url), dep, ARTIFACTS)
        assert market.contract.functions.feeBps().call() == 100
        model_id, _ = market.list_model(deployer, "bafk-m", "bafk-c", 7)
        assert market.listing(model_id).price_per_call == 7
    finally:
        node.stop()
