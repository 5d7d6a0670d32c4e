"""The brownie deploy script against a real anvil it did not start, read back by the
chain binding."""

from __future__ import annotations

import os
import subprocess

import pytest

from marketplace.chain.artifacts import Deployment
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import connect
from marketplace.config import PROJECT_ROOT
from marketplace.devstack.anvil import ANVIL_CHAIN_ID, dev_key, dev_signers, start_anvil
from tests.support.paths import ANVIL_BIN, ARTIFACTS


@pytest.mark.slow
def test_deploy_script_to_any_rpc_url(tmp_path):
    node = start_anvil(ANVIL_BIN)
    try:
        deployer = dev_signers(2)[1]
        key = dev_key(1)
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
        dep = Deployment.load(out)
        assert dep.owner == deployer.address and dep.chain_id == ANVIL_CHAIN_ID
        market = Marketplace(connect(node.rpc_url), dep, ARTIFACTS)
        assert market.contract.functions.feeBps().call() == 100
        model_id, _ = market.list_model(deployer, "bafk-m", "bafk-c", 7)
        assert market.listing(model_id).price_per_call == 7
    finally:
        node.stop()
