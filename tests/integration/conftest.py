"""Fixtures shared by the integration tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace import chain, devstack
from tests.conftest import ANVIL_BIN, ARTIFACTS
from tests.support.world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """The gateway test world on SQLite."""
    yield from make_world(tmp_path)


@pytest.fixture
def pg_world(tmp_path: Path, pg_url: str) -> Iterator[World]:
    """The gateway test world on a real PostgreSQL."""
    yield from make_world(tmp_path, pg_url)


@pytest.fixture
def node() -> Iterator[tuple[chain.Marketplace, list[chain.Signer]]]:
    """A fresh anvil with the contracts, its own per test (reorgs rewrite history)."""
    anvil = devstack.start_anvil(ANVIL_BIN)
    try:
        w3 = chain.connect(anvil.rpc_url)
        signers = devstack.dev_signers(5)
        dep = chain.deploy_marketplace(w3, signers[0], ARTIFACTS, fee_bps=250)
        market = chain.Marketplace(w3, dep, ARTIFACTS)
        for s in signers[1:]:
            chain.send(w3, market.token.functions.mint(s.address, 10**24), signers[0], ARTIFACTS)
            market.approve(s, 10**24)
        yield market, signers
    finally:
        anvil.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
