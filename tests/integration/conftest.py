"""Fixtures shared by the integration tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import Signer, connect
from marketplace.devstack.anvil import dev_signers, start_anvil
from tests.support.market import funded_market
from tests.support.paths import ANVIL_BIN
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
def node() -> Iterator[tuple[Marketplace, list[Signer]]]:
    """A fresh anvil with the contracts, its own per test (reorgs rewrite history)."""
    anvil = start_anvil(ANVIL_BIN)
    try:
        w3 = connect(anvil.rpc_url)
        signers = dev_signers(5)
        yield funded_market(w3, signers, approve=True), signers
    finally:
        anvil.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
