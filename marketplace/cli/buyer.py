"""Buyer commands, thin over the buyer SDK: sign in, keys, buy calls, credits, infer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from rich.table import Table

from marketplace import errors
from marketplace.cli.group import domain_errors, main, out
from marketplace.cli.output import emit, json_option, line, show_fields
from marketplace.cli.wallet import api_key, save_api_key, signer
from marketplace.config import Settings, load_settings

if TYPE_CHECKING:
    from marketplace.client import ModelMarketClient


def client(settings: Settings, *, signed_in: bool = True) -> ModelMarketClient:
    """The SDK against the configured gateway, with the saved API key."""
    from marketplace.client import ModelMarketClient

    return ModelMarketClient(settings.public, api_key(settings) if signed_in else None)


@main.command()
@click.option("--key-name", default="cli", show_default=True, help="A label for the new key.")
@json_option
@domain_errors
def login(key_name: str, as_json: bool) -> None:
    """Sign in with Ethereum and keep the API key for this gateway (mode 600).

    \b
    Example:
      MODELMARKET_KEYSTORE=me.json modelmarket login
    """
    settings = load_settings()
    key = signer(settings)
    sdk = client(settings, signed_in=False)
    path = save_api_key(settings, key.address, sdk.sign_in(key, key_name))
    result = {"address": key.address, "gateway": settings.public, "saved_to": str(path)}
    emit(result, as_json, lambda: line(f"signed in as {key.address}; key saved in {path}"))


@main.command()
@click.option("--revoke", "revoke_id", help="Revoke the key with this id.")
@json_option
@domain_errors
def keys(revoke_id: str | None, as_json: bool) -> None:
    """List your API keys (never their secrets), or revoke one.

    \b
    Example:
      modelmarket keys --revoke 3f2a9c01d4e5b6a7
    """
    sdk = client(load_settings())
    if revoke_id:
        sdk.revoke_key(revoke_id)
    rows = sdk.keys()

    def show() -> None:
        table = Table("key id", "name", "created", "revoked")
        for k in rows:
            table.add_row(k["key_id"], k["name"], k["created_at"], "yes" if k["revoked"] else "")
        out.print(table)

    emit(rows, as_json, show)


def _redeem(sdk: ModelMarketClient, tx_hash: str, wait: float) -> list[dict[str, Any]]:
    """Redeem, waiting up to `wait` seconds for the confirmations the gateway asks for."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return sdk.redeem(tx_hash)
        except errors.RemoteError as exc:
            if exc.code != "receipt_unconfirmed" or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@main.command()
@click.argument("model_id", type=int)
@click.option("--calls", type=click.IntRange(min=1), required=True, help="Calls to buy.")
@json_option
@domain_errors
def buy(model_id: int, calls: int, as_json: bool) -> None:
    """Buy calls of a model on-chain, then redeem them: one transaction with a permit, or
    approve + purchase when the listing's token takes no permits.

    \b
    Example:
      modelmarket buy 3 --calls 100
    """
    from marketplace.bootstrap import make_market

    settings = load_settings()
    sdk = client(settings)
    listing = sdk.model(model_id)  # 404 for an unknown model, before any transaction
    if not listing["offered"]:
        raise errors.ListingInactive(f"model {model_id} is not for sale")
    binding = make_market(settings)
    price = int(listing["price_per_call"])
    receipt = binding.buy(
        signer(settings), model_id, calls, price, deadline=int(time.time()) + 3600
    )
    tx_hash = receipt["transactionHash"].to_0x_hex()
    try:
        credited = _redeem(sdk, tx_hash, settings.redeem_wait)
    except errors.ModelMarketError as exc:
        if exc.code != "receipt_already_redeemed":
            # the tokens moved: the indexer credits the purchase on its own
            raise errors.PurchaseNotRedeemed(
                f"the purchase is on-chain (tx {tx_hash}) but redeeming it failed"
                f" ({exc.message}); the indexer credits it within a few blocks: check with"
                " `modelmarket credits`"
            ) from None
        credited = [{"model_id": model_id, "calls": calls}]  # the indexer was first
    left = sum(int(c["calls"]) for c in credited)
    result = {"model_id": model_id, "calls": calls, "tx_hash": tx_hash, "credited": credited}
    emit(result, as_json, lambda: line(f"bought {left} calls of model {model_id} (tx {tx_hash})"))


@main.command()
@click.argument("tx_hash")
@json_option
@domain_errors
def redeem(tx_hash: str, as_json: bool) -> None:
    """Credit a purchase transaction you made to your account.

    \b
    Example:
      modelmarket redeem 0x5c50...e1
    """
    settings = load_settings()
    credited = _redeem(client(settings), tx_hash, settings.redeem_wait)

    def show() -> None:
        for entry in credited:
            show_fields(entry)

    emit(credited, as_json, show)


@main.command()
@json_option
@domain_errors
def credits(as_json: bool) -> None:
    """Calls you have left, per model.

    \b
    Example:
      modelmarket credits
    """
    held = client(load_settings()).credits()

    def show() -> None:
        table = Table("model", "calls left")
        for model_id, left in sorted(held.items()):
            table.add_row(str(model_id), str(left))
        out.print(table)

    emit({str(k): v for k, v in held.items()}, as_json, show)


def _inputs(sdk: ModelMarketClient, model_id: int, path: Path) -> dict[str, np.ndarray]:
    """The model's inputs from a .npy file (its one input) or a JSON object of arrays."""
    meta = sdk.metadata(model_id)
    specs = {i["name"]: i["datatype"] for i in meta["inputs"]}
    if path.suffix == ".npy":
        if len(specs) != 1:
            raise errors.BadRequest(f"model {model_id} takes {len(specs)} inputs: use a JSON file")
        return {next(iter(specs)): np.load(path, allow_pickle=False)}
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise errors.BadRequest(f"{path} is not JSON") from None
    if not isinstance(doc, dict):
        raise errors.BadRequest(f"{path} must hold an object: input name -> array")
    unknown = set(doc) - set(specs)
    if unknown:
        raise errors.BadRequest(f"model {model_id} has no input {sorted(unknown)[0]!r}")
    from inference.codecs import NUMPY_TYPES

    as_float = np.dtype(np.float32)
    return {n: np.asarray(v, dtype=NUMPY_TYPES.get(specs[n], as_float)) for n, v in doc.items()}


@main.command()
@click.argument("model_id", type=int)
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A .npy file (one input) or a JSON object of input name -> array.",
)
@click.option(
    "--x402",
    "per_call",
    is_flag=True,
    help="Pay this call with x402 from your wallet (no login, no purchase), at most the"
    " listed price.",
)
@click.option(
    "--save-receipt",
    "receipt_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the call's usage receipt here (check it later with `modelmarket verify`).",
)
@json_option
@domain_errors
def infer(
    model_id: int, input_path: Path, per_call: bool, receipt_path: Path | None, as_json: bool
) -> None:
    """One paid call: prints the outputs and the calls you have left (or, with --x402,
    the settlement's transaction).

    \b
    Example:
      echo '{"features": [[5.1, 3.5, 1.4, 0.2]]}' > in.json
      modelmarket infer 1 --input in.json
      MODELMARKET_KEYSTORE=me.json modelmarket infer 1 --input in.json --x402
    """
    settings = load_settings()
    sdk = client(settings, signed_in=not per_call)
    if per_call:
        # the cap is the price shown now: a seller raising it meanwhile is refused
        price = int(sdk.model(model_id)["price_per_call"])
        sdk.pay_per_call(signer(settings), max_amount=price)
    answer = sdk.infer(model_id, _inputs(sdk, model_id, input_path))
    result = {
        "outputs": {k: v.tolist() for k, v in answer.outputs.items()},
        "calls_left": answer.calls_left,
        "inference_id": answer.inference_id,
        "payment_tx": answer.payment_tx,
        "receipt": answer.receipt,
    }

    def show() -> None:
        for name, array in answer.outputs.items():
            line(f"{name} = {array.tolist()}")
        if answer.payment_tx:
            line(f"paid with x402: {answer.payment_tx}")
        else:
            line(f"calls left: {answer.calls_left}")

    emit(result, as_json, show)  # the paid answer first: saving the receipt may fail
    if receipt_path is not None:
        _save_receipt(answer.receipt, receipt_path)


def _save_receipt(header: str | None, path: Path) -> None:
    """Write the call's receipt as typed data (the answer was shown already)."""
    from marketplace.usage.receipts import from_header, to_json

    if header is None:
        raise errors.NotFound("this gateway issues no usage receipts: nothing saved")
    try:
        path.write_text(json.dumps(to_json(*from_header(header)), indent=2))
    except OSError as exc:
        raise errors.BadRequest(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"usage receipt saved to {path}", err=True)
