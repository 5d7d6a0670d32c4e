"""Shared fixtures: a real anvil on a free loopback port, with the real contracts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from web3 import Web3

from marketplace.chain.artifacts import Deployment
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import Signer, connect
from marketplace.config import Settings
from marketplace.db.migrate import migrate
from marketplace.devstack.anvil import Anvil, dev_signers, start_anvil
from tests.support.launchers import JsIpfs, start_jsipfs, start_postgres
from tests.support.market import funded_market
from tests.support.paths import ANVIL_BIN, ARTIFACTS, JSIPFS

# CI runs a fixed sequence of examples (a red run must be reproducible); local runs
# explore new ones each time.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh data dir, ignoring any .env of the developer's."""
    return Settings(_env_file=None, data_dir=tmp_path / "data", anvil_bin=ANVIL_BIN)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One anvil for the session; tests isolate themselves with snapshots."""
    node = start_anvil(ANVIL_BIN)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    return connect(anvil.rpc_url)


@pytest.fixture(scope="session")
def signers() -> list[Signer]:
    """anvil's dev accounts: 0 owns, 1 sells, 2 buys, 3 is a stranger, 4 buys too."""
    return dev_signers(5)


@pytest.fixture(scope="session")
def deployment(w3: Web3, signers: list[Signer]) -> Deployment:
    return funded_market(w3, signers).deployment


@pytest.fixture
def market(w3: Web3, deployment: Deployment) -> Iterator[Marketplace]:
    """The deployed marketplace; chain state is rolled back after each test."""
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield Marketplace(w3, deployment, ARTIFACTS)
    w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


# ----------------------------------------------------------------------- IPFS


@pytest.fixture(scope="session")
def jsipfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JsIpfs]:
    """One js-ipfs daemon for the session."""
    node = start_jsipfs(JSIPFS, tmp_path_factory.mktemp("jsipfs") / "repo")
    yield node
    node.stop()


# ----------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL 15 (Debian's binaries, as the postgres user), fsync off; yields
    an admin URL for a fresh cluster."""
    cluster = start_postgres(durable=False)
    yield cluster.url
    cluster.stop()


@pytest.fixture
def pg_url(postgres: str) -> Iterator[str]:
    """A fresh, migrated database in the session's PostgreSQL."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite file."""
    url = f"sqlite:///{tmp_path / 'mm.db'}"
    migrate(url)
    return url
