"""The gateway test world: a real anvil with the contracts, a migrated database, the
iris demo listed through the real store and indexer, and the app on Flask's test client;
plus the walk's steps (sign in with a real SIWE signature, buy on-chain, infer)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
from eth_account import Account
from eth_account.messages import encode_defunct

from app import create_app
from inference import codecs
from inference.demos import DEMO_DIR
from marketplace.bootstrap import make_indexer
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import Signer, connect, send
from marketplace.config import Settings
from marketplace.db.migrate import migrate
from marketplace.devstack.anvil import Anvil, dev_key, dev_signers, start_anvil
from storage.local import LocalStore
from tests.support.market import funded_market
from tests.support.paths import ANVIL_BIN, ARTIFACTS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import siwe

PRICE = 10**15
SETTLER = 5  # the dev account that settles x402 payments (holds gas, no tokens)


@dataclass
class World:
    settings: Settings
    market: Marketplace
    signers: list[Signer]
    keys: list[str]
    client: object
    model_id: int
    anvil: Anvil

    def restart_chain(self) -> None:
        """Start the world's anvil again on the same port from the state it wrote when
        it stopped (the world must have been made with `chain_state`)."""
        port = int(self.anvil.rpc_url.rsplit(":", 1)[1])
        assert self.anvil.state_file is not None, "make_world(..., chain_state=True)"
        self.anvil = start_anvil(ANVIL_BIN, state_file=self.anvil.state_file, port=port)

    def mine(self, n: int = 1) -> None:
        self.market.w3.provider.make_request("anvil_mine", [n])  # type: ignore[arg-type]

    def index(self) -> None:
        make_indexer(self.settings).run_once()


def make_world(
    tmp_path: Path, database_url: str | None = None, *, chain_state: bool = False
) -> Iterator[World]:
    """Build the world on a fresh anvil (stopped when the generator closes); with
    `chain_state`, anvil keeps its chain in a file, so it can be stopped and restarted."""
    state = tmp_path / "anvil-state.json" if chain_state else None
    anvil = start_anvil(ANVIL_BIN, state_file=state)
    app = None
    world: World | None = None
    try:
        w3 = connect(anvil.rpc_url)
        signers = dev_signers(5)
        market = funded_market(w3, signers)
        dep = market.deployment
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path / "data",  # type: ignore[call-arg]
            rpc_url=anvil.rpc_url,
            confirmations=1,
            anvil_bin=ANVIL_BIN,
            database_url=database_url,
            settler_key=dev_key(SETTLER),
        )
        send(
            w3,
            market.contract.functions.setSettler(Signer(dev_key(SETTLER)).address, True),
            signers[0],
            ARTIFACTS,
        )
        dep.save(settings.deployment_path)
        migrate(settings.db_url)
        store = LocalStore(settings.store_dir)
        model_cid = store.add(io.BytesIO((DEMO_DIR / "iris-classifier.onnx").read_bytes()))
        card_cid = store.add(io.BytesIO(orjson.dumps({"name": "Iris", "tags": ["tabular"]})))
        model_id, _ = market.list_model(signers[1], model_cid, card_cid, PRICE)
        world = World(
            settings,
            market,
            signers,
            [dev_key(i) for i in range(5)],
            (app := create_app(settings)).test_client(),
            model_id,
            anvil,
        )
        world.mine(1)
        world.index()
        yield world
    finally:
        if app is not None:  # its background keeper writes what is left, then stops
            app.extensions["modelmarket"].prepaid.close()
            app.extensions["modelmarket"].x402.close()
            app.extensions["modelmarket"].anchorer.stop()
        (world.anvil if world is not None else anvil).stop()


def sign_in(world: World, who: int) -> str:
    """Sign-In with Ethereum as dev account `who`; returns the API key."""
    client = world.client
    nonce = client.post("/api/v1/auth/nonce").get_json()["nonce"]
    address = world.signers[who].address
    public = urlsplit(world.settings.public)
    message = siwe.SiweMessage(
        domain=public.netloc,
        address=address,
        statement="Sign in to ModelMarket",
        uri=world.settings.public,
        version="1",
        chain_id=31337,
        nonce=nonce,
        issued_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    ).prepare_message()
    signed = Account.sign_message(encode_defunct(text=message), world.keys[who])
    resp = client.post(
        "/api/v1/auth/verify",
        json={"message": message, "signature": "0x" + signed.signature.hex().removeprefix("0x")},
    )
    assert resp.status_code == 201, resp.get_json()
    return str(resp.get_json()["api_key"])


def buy(world: World, who: int, calls: int) -> str:
    market, buyer = world.market, world.signers[who]
    market.approve(buyer, calls * PRICE)
    receipt = market.purchase(buyer, world.model_id, calls, PRICE)
    world.mine(1)
    return receipt["transactionHash"].to_0x_hex()


def infer(world: World, key: str, rows: int = 1):  # type: ignore[no-untyped-def]
    body, headers = codecs.encode_request(
        {"features": np.array([[5.1, 3.5, 1.4, 0.2]] * rows, np.float32)}
    )
    return world.client.post(
        f"/v2/models/{world.model_id}/infer",
        data=body,
        headers={**headers, "Authorization": f"Bearer {key}"},
    )
