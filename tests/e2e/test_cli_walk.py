"""The seller and buyer walk from a terminal: `modelmarket` run as subprocesses, exactly
as a user would, against a real anvil, a real js-ipfs node and the gateway on a real HTTP
server; then the same walk through the buyer SDK in a few lines; then bad input, each
one clear line and its exit code, with nothing half-done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from eth_account import Account

from inference.demos import DEMO_DIR
from marketplace import errors
from marketplace.bootstrap import make_indexer
from marketplace.chain.artifacts import load_artifact
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import Signer, connect, deploy, send
from marketplace.client import ModelMarketClient
from marketplace.config import Settings
from marketplace.db.migrate import migrate
from marketplace.devstack.anvil import dev_key, dev_signers, start_anvil
from marketplace.devstack.ports import free_port
from tests.fixtures import hostile_models
from tests.support.launchers import JsIpfs, serving
from tests.support.market import funded_market
from tests.support.paths import ANVIL_BIN, ARTIFACTS
from tests.support.world import SETTLER

pytestmark = pytest.mark.slow
IRIS = DEMO_DIR / "iris-classifier.onnx"
PASSWORD = "correct horse battery staple"


@dataclass
class Market:
    settings: Settings
    market: Marketplace
    env: dict[str, str]
    keystore: Path
    tmp: Path

    def cli(self, *args: str, who: str = "seller", **env: str) -> subprocess.CompletedProcess[str]:
        """`modelmarket ARGS` as `who` (the seller or a stranger by private key, the buyer
        by keystore)."""
        keys = {"seller": dev_key(1), "stranger": dev_key(4)}
        role = (
            {"MODELMARKET_PRIVATE_KEY": keys[who]}
            if who in keys
            else {
                "MODELMARKET_KEYSTORE": str(self.keystore),
                "MODELMARKET_KEYSTORE_PASSWORD": PASSWORD,
            }
        )
        return subprocess.run(
            [sys.executable, "-m", "marketplace.cli", *args],
            env={**self.env, **role, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )

    def json(self, *args: str, who: str = "seller") -> object:
        done = self.cli(*args, "--json", who=who)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def index(self) -> None:
        self.market.w3.provider.make_request("anvil_mine", [1])  # type: ignore[arg-type]
        make_indexer(self.settings).run_once()


@pytest.fixture
def live(tmp_path: Path, jsipfs: JsIpfs) -> Iterator[Market]:
    """anvil with the contracts, a js-ipfs node, a migrated database, and the gateway on a
    real server."""
    anvil = start_anvil(ANVIL_BIN)
    port = free_port()
    try:
        w3 = connect(anvil.rpc_url)
        market = funded_market(w3, dev_signers(5))
        settler = market.contract.functions.setSettler(Signer(dev_key(SETTLER)).address, True)
        send(w3, settler, dev_signers(1)[0], ARTIFACTS)
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path / "data",  # type: ignore[call-arg]
            rpc_url=anvil.rpc_url,
            confirmations=0,
            public_url=f"http://127.0.0.1:{port}",
            ipfs_api=jsipfs.api,
            settler_key=dev_key(SETTLER),
        )
        market.deployment.save(settings.deployment_path)
        migrate(settings.db_url)
        keystore = tmp_path / "buyer.json"
        keystore.write_text(json.dumps(Account.encrypt(dev_key(2), PASSWORD)))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")},
            "MODELMARKET_DATA_DIR": str(settings.data_dir),
            "MODELMARKET_RPC_URL": anvil.rpc_url,
            "MODELMARKET_PUBLIC_URL": settings.public,
            "MODELMARKET_CONFIRMATIONS": "0",
            "MODELMARKET_IPFS_API": jsipfs.api,
            "MODELMARKET_CONFIG_DIR": str(tmp_path / "config"),
        }
        with serving(settings, port):
            yield Market(settings, market, env, keystore, tmp_path)
    finally:
        anvil.stop()


def test_upload_login_buy_infer_credits_earnings_withdraw(live: Market):
    listed = live.json(
        "upload", str(IRIS), "--name", "Iris", "--tags", "tabular,demo", "--price", "0.001"
    )
    assert isinstance(listed, dict)
    model_id = int(listed["model_id"])
    assert listed["price_per_call"] == str(10**15)
    assert listed["url"] == f"{live.settings.public}/models/{model_id}"
    live.index()

    login = live.json("login", who="buyer")
    saved = Path(login["saved_to"])  # type: ignore[index]
    assert saved.stat().st_mode & 0o777 == 0o600
    assert dev_key(2)[2:] not in saved.read_text()  # the API key is kept, never the wallet's

    bought = live.json("buy", str(model_id), "--calls", "5", who="buyer")
    assert bought["credited"][0]["calls"] == 5  # type: ignore[index]
    request = live.tmp / "in.json"
    request.write_text(json.dumps({"features": [[5.1, 3.5, 1.4, 0.2]]}))
    lefts = [
        live.json("infer", str(model_id), "--input", str(request), who="buyer")["calls_left"]
        for _ in range(3)
    ]  # type: ignore[index]
    assert lefts == [4, 3, 2]
    assert live.json("credits", who="buyer") == {str(model_id): 2}

    seller = dev_signers(2)[1].address
    mine = live.json("models")
    assert isinstance(mine, dict)
    (row,) = mine["models"]
    assert (row["model_id"], row["calls_sold"], row["calls_served"]) == (model_id, 5, 3)
    assert row["model_status"] == "ok" and row["name"] == "Iris"
    earned = int(live.json("earnings")["earnings"])  # type: ignore[index]
    assert int(mine["earnings"]) == earned
    assert earned == 5 * 10**15 * (10_000 - 250) // 10_000  # 5 calls, less the 2.5% fee
    before = live.market.token_balance(seller)
    live.json("withdraw")
    assert live.market.token_balance(seller) == before + earned
    assert live.json("earnings")["earnings"] == "0"  # type: ignore[index]

    # the same walk as a buyer's script, through the SDK
    sdk = ModelMarketClient(live.settings.public)
    sdk.sign_in(dev_key(3))
    buyer = dev_signers(4)[3]
    plan = sdk.purchase_plan(model_id, 2)
    assert int(plan["total"]) == 2 * 10**15
    live.market.approve(buyer, 2 * 10**15)
    tx = live.market.purchase(buyer, model_id, 2, 10**15)["transactionHash"].to_0x_hex()
    assert sdk.redeem(tx)[0]["calls"] == 2
    answer = sdk.infer(model_id, {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)})
    assert answer.calls_left == 1 and answer.outputs["label"].shape == (1,)
    assert sdk.credits() == {model_id: 1}


def test_a_call_paid_with_x402_from_the_cli_and_the_sdk(live: Market):
    """No login and no purchase: the wallet signs an EIP-3009 authorization per call
    (the x402 SDK inside the CLI and the buyer SDK); the gateway settles it on-chain."""
    listed = live.json("upload", str(IRIS), "--name", "Iris", "--price", "0.001")
    model_id = int(listed["model_id"])  # type: ignore[index]
    live.index()
    request = live.tmp / "in.json"
    request.write_text(json.dumps({"features": [[5.1, 3.5, 1.4, 0.2]]}))
    payer, seller = dev_signers(3)[2].address, dev_signers(2)[1].address
    price, net = 10**15, 10**15 * (10_000 - 250) // 10_000
    before = live.market.token_balance(payer), live.market.earnings(seller)

    paid = live.json("infer", str(model_id), "--input", str(request), "--x402", who="buyer")
    assert isinstance(paid, dict)
    assert paid["outputs"]["label"] == [0] and paid["calls_left"] is None
    assert live.market.w3.eth.get_transaction_receipt(paid["payment_tx"])["status"] == 1
    after = live.market.token_balance(payer), live.market.earnings(seller)
    assert after == (before[0] - price, before[1] + net)
    assert not (live.tmp / "config").exists()  # no sign-in was needed: no key was saved

    features = {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    sdk = ModelMarketClient(live.settings.public)
    sdk.pay_per_call(dev_key(3), max_amount=price)
    answer = sdk.infer(model_id, features)
    assert answer.payment_tx and answer.outputs["label"].tolist() == [0]
    # a cap below the price: the client refuses to pay, and nothing moves
    spent = live.market.token_balance(dev_signers(4)[3].address)
    capped = ModelMarketClient(live.settings.public)
    capped.pay_per_call(dev_key(3), max_amount=price - 1)
    with pytest.raises(errors.PaymentRequired):
        capped.infer(model_id, features)
    assert live.market.token_balance(dev_signers(4)[3].address) == spent


def _one_line(done: subprocess.CompletedProcess[str], code: int, error: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert done.stderr.rstrip().endswith(f"[{error}]"), done.stderr
    assert "Traceback" not in done.stderr


def test_bad_input_is_one_clear_line_and_nothing_is_half_done(live: Market):
    count = live.market.contract.functions.listingCount().call
    not_onnx = live.tmp / "notes.onnx"
    not_onnx.write_bytes(b"these are not the weights you are looking for")
    _one_line(live.cli("upload", str(not_onnx), "--name", "x", "--price", "1"), 3, "not_onnx")
    # models the validator refuses, one of each kind: its rules, its graph check, the
    # load-cost bound and the trial load
    for build, error in (
        (hostile_models.external_data, "external_data"),
        (hostile_models.invalid_graph, "invalid_graph"),
        (hostile_models.sparse_constant, "load_size_too_large"),
        (hostile_models.unsupported_kernel, "model_load_failed"),
    ):
        refused = live.tmp / f"{error}.onnx"
        refused.write_bytes(build())
        _one_line(live.cli("upload", str(refused), "--name", "x", "--price", "1"), 3, error)
    for price in ("-1", "abc", "0", "0.0000000000000000001"):
        _one_line(live.cli("upload", str(IRIS), "--name", "x", "--price", price), 3, "bad_request")
    dead = f"http://127.0.0.1:{free_port()}"
    _one_line(
        live.cli("upload", str(IRIS), "--name", "x", "--price", "1", MODELMARKET_RPC_URL=dead),
        5,
        "chain_unavailable",
    )
    _one_line(
        live.cli(
            "upload",
            str(IRIS),
            "--name",
            "x",
            "--price",
            "1",
            MODELMARKET_IPFS_API=f"/ip4/127.0.0.1/tcp/{free_port()}/http",
        ),
        5,
        "store_unavailable",
    )
    assert count() == 0, "nothing was listed"

    _one_line(
        live.cli("login", who="buyer", MODELMARKET_KEYSTORE_PASSWORD="wrong"), 4, "unauthenticated"
    )
    assert live.cli("login", who="buyer").returncode == 0
    balance = live.market.token_balance(dev_signers(3)[2].address)
    _one_line(live.cli("buy", "999", "--calls", "1", who="buyer"), 3, "not_found")
    assert live.market.token_balance(dev_signers(3)[2].address) == balance, "no tokens spent"

    listed = live.json("upload", str(IRIS), "--name", "Iris", "--price", "0.001")
    live.index()
    request = live.tmp / "in.json"
    request.write_text(json.dumps({"features": [[5.1, 3.5, 1.4, 0.2]]}))
    _one_line(
        live.cli("infer", str(listed["model_id"]), "--input", str(request), who="buyer"),  # type: ignore[index]
        4,
        "payment_required",
    )


def test_operator_commands_from_a_folder_whose_path_holds_a_dot(live: Market, tmp_path: Path):
    where = tmp_path / "tmp.checkout"  # brownie once imported such a path as a module
    where.mkdir()
    record = where / "deployment.json"
    owner = {"MODELMARKET_PRIVATE_KEY": dev_key(0), "MODELMARKET_DEPLOYMENT_FILE": str(record)}
    done = subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "deploy", "--fee-bps", "100", "--json"],
        env={**live.env, **owner},
        cwd=where,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    deployed = json.loads(done.stdout)
    assert json.loads(record.read_text())["marketplace"] == deployed["marketplace"]
    assert live.market.w3.eth.get_code(deployed["marketplace"]) != b""

    # the owner pauses the marketplace the gateway serves: listing is refused, then works
    as_owner = {"MODELMARKET_PRIVATE_KEY": dev_key(0)}
    assert live.cli("pause", **as_owner).returncode == 0
    _one_line(live.cli("upload", str(IRIS), "--name", "x", "--price", "1"), 5, "marketplace_paused")
    assert live.cli("unpause", **as_owner).returncode == 0
    listed = live.json("upload", str(IRIS), "--name", "Iris", "--price", "1")

    # a listed model's bytes travel as a CAR file and come back to the same CID
    car = live.tmp / "iris.car"
    exported = live.json("export-car", listed["model_cid"], str(car))  # type: ignore[index]
    assert exported["bytes"] == car.stat().st_size > IRIS.stat().st_size  # type: ignore[index]
    assert live.json("import-car", str(car))["cid"] == listed["model_cid"]  # type: ignore[index]


def test_a_new_version_lists_its_versions_and_only_its_seller_can_claim_one(live: Market):
    first = live.json("upload", str(IRIS), "--name", "Iris", "--price", "0.001")
    second = live.json(
        "upload",
        str(IRIS),
        "--name",
        "Iris v2",
        "--price",
        "0.002",
        "--supersedes",
        str(first["model_id"]),
    )  # type: ignore[index]
    # another seller claims to supersede the first seller's model: never honoured
    stranger = live.json(
        "upload",
        str(IRIS),
        "--name",
        "Iris (not)",
        "--price",
        "0.001",
        "--supersedes",
        str(first["model_id"]),  # type: ignore[index]
        who="stranger",
    )
    live.index()
    sdk = ModelMarketClient(live.settings.public)
    ids = [int(x["model_id"]) for x in (first, second, stranger)]  # type: ignore[index]
    assert sdk.model(ids[1])["supersedes"] == ids[0]
    assert sdk.model(ids[0])["versions"] == sdk.model(ids[1])["versions"] == [ids[1], ids[0]]
    assert sdk.model(ids[2])["supersedes"] is None
    assert sdk.model(ids[2])["versions"] == [ids[2]]


def test_a_purchase_the_gateway_cannot_redeem_yet_is_said_so_and_credited_later(live: Market):
    """The tokens move, then redeeming fails (here: a gateway that wants 5 confirmations
    on a chain that mines no more blocks). `buy` says the purchase is on-chain and how to
    check; the indexer credits it once it is confirmed. Nothing is lost or doubled."""
    listed = live.json("upload", str(IRIS), "--name", "Iris", "--price", "0.001")
    model_id = int(listed["model_id"])  # type: ignore[index]
    live.index()
    port = free_port()
    strict = live.settings.model_copy(
        update={"confirmations": 5, "public_url": f"http://127.0.0.1:{port}"}
    )
    with serving(strict, port):
        there = {"MODELMARKET_PUBLIC_URL": strict.public, "MODELMARKET_REDEEM_WAIT": "2"}
        assert live.cli("login", who="buyer", **there).returncode == 0
        buyer = dev_signers(3)[2].address
        before = live.market.token_balance(buyer)
        done = live.cli("buy", str(model_id), "--calls", "4", who="buyer", **there)
        _one_line(done, 5, "purchase_not_redeemed")
        assert "modelmarket credits" in done.stderr
        assert live.market.token_balance(buyer) == before - 4 * 10**15, "the tokens moved"
        assert live.cli("login", who="buyer").returncode == 0  # at the usual gateway too
        assert live.json("credits", who="buyer") == {}
    for _ in range(5):
        live.market.w3.provider.make_request("anvil_mine", [1])  # type: ignore[arg-type]
    live.index()
    assert live.json("credits", who="buyer") == {str(model_id): 4}
    tx = done.stderr.split("(tx ")[1].split(")")[0]
    # redeeming it now adds nothing: the indexer's credit is the one credit
    _one_line(live.cli("redeem", tx, who="buyer"), 3, "receipt_already_redeemed")
    assert live.json("credits", who="buyer") == {str(model_id): 4}


def test_a_token_without_permits_is_bought_with_approve_then_purchase(live: Market):
    """An allowlisted ERC-20 with no EIP-2612 (many stablecoins): `buy` approves only
    what the allowance lacks, then purchases; calls are credited as with a permit."""
    owner = dev_signers(1)[0]
    w3 = live.market.w3
    plain = load_artifact(ARTIFACTS, "PlainToken")
    address, _ = deploy(w3, plain, owner, ARTIFACTS)
    token = w3.eth.contract(address=address, abi=plain.abi)
    send(w3, live.market.contract.functions.setTokenAllowed(address, True), owner, ARTIFACTS)
    buyer = dev_signers(3)[2].address
    send(w3, token.functions.mint(buyer, 10**18), owner, ARTIFACTS)
    assert not live.market.supports_permit(address) and live.market.supports_permit()

    listed = live.json("upload", str(IRIS), "--name", "Iris", "--price", "0.01", "--token", address)
    model_id = int(listed["model_id"])  # type: ignore[index]
    live.index()
    assert live.cli("login", who="buyer").returncode == 0
    bought = live.json("buy", str(model_id), "--calls", "3", who="buyer")
    assert bought["credited"][0]["calls"] == 3  # type: ignore[index]
    assert live.market.token_balance(buyer, address) == 10**18 - 3 * 10**16
    # exactly what was needed was approved, and the purchase used all of it
    assert token.functions.allowance(buyer, live.market.contract.address).call() == 0
    assert live.json("buy", str(model_id), "--calls", "2", who="buyer")["credited"]  # type: ignore[index]
    assert live.json("credits", who="buyer") == {str(model_id): 5}
    assert live.market.earnings(dev_signers(2)[1].address, address) == (
        5 * 10**16 * (10_000 - 250) // 10_000
    )
