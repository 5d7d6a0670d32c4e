"""Seller commands: upload and list a model, see and change your listings, withdraw."""

from __future__ import annotations

from contextlib import nullcontext
from decimal import Decimal
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from marketplace.cli.group import domain_errors, main, out
from marketplace.cli.output import emit, json_option, line, show_fields
from marketplace.cli.wallet import signer
from marketplace.config import load_settings


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The listing's title.")
@click.option("--description", help="What the model does.")
@click.option("--license", "license_", help="A licence name or SPDX id.")
@click.option("--tags", default="", help="Comma-separated labels.")
@click.option("--price", required=True, help="Price per call in token units, e.g. 0.02.")
@click.option("--token", help="The ERC-20 to be paid in (default: the marketplace's token).")
@click.option("--supersedes", type=click.IntRange(min=1), help="A new version of listing ID.")
@json_option
@domain_errors
def upload(
    model: Path,
    name: str,
    description: str | None,
    license_: str | None,
    tags: str,
    price: str,
    token: str | None,
    supersedes: int | None,
    as_json: bool,
) -> None:
    """Check MODEL.onnx, store it and its model card, and list it for sale (with
    --supersedes, as a new version of one of your listings).

    \b
    Example:
      modelmarket upload iris.onnx --name "Iris" --tags tabular,demo --price 0.001
    """
    from marketplace.bootstrap import make_market, make_store, model_checks
    from marketplace.catalog.publish import CardText, checked_card, publish
    from marketplace.catalog.units import parse_price

    settings = load_settings()
    labels = tuple(t.strip() for t in tags.split(",") if t.strip())
    data = model.read_bytes()
    text = CardText(name, description, license_, labels, supersedes)
    # the trial load of a large model takes seconds: say what is happening meanwhile
    with (
        out.status(f"checking {escape(model.name)} (inspect and a trial load)")
        if not as_json
        else nullcontext()
    ):
        card = checked_card(
            data, text, model_checks(settings), max_card_bytes=settings.max_card_bytes
        )
    binding = make_market(settings)
    atomic = parse_price(price, binding.token_decimals(token))
    key = signer(settings)
    store = make_store(settings)
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=out, transient=True, disable=as_json) as bar:
        task = bar.add_task("storing", total=len(data))
        done = publish(
            binding,
            store,
            key,
            data,
            card,
            atomic,
            token=token,
            on_bytes=lambda n: bar.update(task, advance=n),
        )
    result = {
        "model_id": done.model_id,
        "model_cid": done.model_cid,
        "card_cid": done.card_cid,
        "tx_hash": done.tx_hash,
        "price_per_call": str(atomic),
        "url": f"{settings.public}/models/{done.model_id}",  # its storefront page
    }
    emit(result, as_json, lambda: show_fields(result))


def _change(verb: str, model_id: int, as_json: bool, send: object) -> None:
    result = {"model_id": model_id, "tx_hash": send}
    emit(result, as_json, lambda: line(f"model {model_id} {verb} (tx {send})"))


@main.command("set-price")
@click.argument("model_id", type=int)
@click.argument("price")
@json_option
@domain_errors
def set_price(model_id: int, price: str, as_json: bool) -> None:
    """Change a listing's price per call (token units).

    \b
    Example:
      modelmarket set-price 3 0.002
    """
    from marketplace.bootstrap import make_market
    from marketplace.catalog.units import parse_price

    settings = load_settings()
    binding = make_market(settings)
    atomic = parse_price(price, binding.token_decimals(binding.listing(model_id).token))
    receipt = binding.set_price(signer(settings), model_id, atomic)
    _change(
        f"now costs {atomic} per call", model_id, as_json, receipt["transactionHash"].to_0x_hex()
    )


@main.command()
@click.argument("model_id", type=int)
@json_option
@domain_errors
def delist(model_id: int, as_json: bool) -> None:
    """Stop selling a listing (buyers keep the calls they hold).

    \b
    Example:
      modelmarket delist 3
    """
    from marketplace.bootstrap import make_market

    settings = load_settings()
    receipt = make_market(settings).delist(signer(settings), model_id)
    _change("is delisted", model_id, as_json, receipt["transactionHash"].to_0x_hex())


@main.command()
@click.argument("model_id", type=int)
@json_option
@domain_errors
def relist(model_id: int, as_json: bool) -> None:
    """Sell a delisted listing again.

    \b
    Example:
      modelmarket relist 3
    """
    from marketplace.bootstrap import make_market

    settings = load_settings()
    receipt = make_market(settings).relist(signer(settings), model_id)
    _change("is listed again", model_id, as_json, receipt["transactionHash"].to_0x_hex())


@main.command()
@click.option("--token", help="The ERC-20 (default: the marketplace's token).")
@json_option
@domain_errors
def earnings(token: str | None, as_json: bool) -> None:
    """What you can withdraw, in the token's smallest unit and in token units.

    \b
    Example:
      modelmarket earnings
    """
    from marketplace.bootstrap import make_market

    settings = load_settings()
    binding = make_market(settings)
    me = signer(settings).address
    amount = binding.earnings(me, token)
    units = Decimal(amount).scaleb(-binding.token_decimals(token))
    result = {"seller": me, "earnings": str(amount), "tokens": str(units)}
    emit(result, as_json, lambda: line(f"{me} can withdraw {units} ({amount} units)"))


@main.command()
@click.option("--token", help="The ERC-20 (default: the marketplace's token).")
@json_option
@domain_errors
def withdraw(token: str | None, as_json: bool) -> None:
    """Move your earnings to your address.

    \b
    Example:
      modelmarket withdraw
    """
    from marketplace.bootstrap import make_market

    settings = load_settings()
    binding = make_market(settings)
    key = signer(settings)
    amount = binding.earnings(key.address, token)
    receipt = binding.withdraw(key, token)
    result = {"withdrawn": str(amount), "tx_hash": receipt["transactionHash"].to_0x_hex()}
    emit(result, as_json, lambda: line(f"withdrew {amount} units (tx {result['tx_hash']})"))


@main.command("export-car")
@click.argument("cid")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@domain_errors
def export_car(cid: str, out: Path, as_json: bool) -> None:
    """Write a stored file (a model, a card) as a CAR v1 file, to move it to any IPFS node.

    \b
    Example:
      modelmarket export-car bafkrei... iris.car
    """
    from marketplace.bootstrap import make_store

    settings = load_settings()
    store = make_store(settings)
    with out.open("wb") as stream:
        size = store.export_car(cid, stream)
    result = {"cid": cid, "car": str(out), "bytes": size}
    emit(result, as_json, lambda: line(f"wrote {cid} to {out} ({size:,} bytes)"))


@main.command("import-car")
@click.argument("car", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@domain_errors
def import_car(car: Path, as_json: bool) -> None:
    """Store the file a CAR v1 holds (every block verified); prints its root CID.

    \b
    Example:
      modelmarket import-car iris.car
    """
    from marketplace.bootstrap import make_store

    settings = load_settings()
    store = make_store(settings)
    with car.open("rb") as stream:
        root = store.import_car(stream)
    emit({"cid": root}, as_json, lambda: line(f"stored {root}"))


@main.command()
@click.option("--seller", help="Whose listings (default: your own address).")
@json_option
@domain_errors
def models(seller: str | None, as_json: bool) -> None:
    """Your listings, offered or not: status, price, calls sold, served and anchored
    on-chain (their usage receipts' roots); and what you can withdraw.

    \b
    Example:
      modelmarket models
    """
    from marketplace.bootstrap import make_market
    from marketplace.client import ModelMarketClient

    settings = load_settings()
    who = seller or signer(settings).address
    rows = ModelMarketClient(settings.public).seller_models(who)
    binding = make_market(settings)
    owed = binding.earnings(who)
    units = Decimal(owed).scaleb(-binding.token_decimals())
    result = {"seller": who, "earnings": str(owed), "models": rows}

    def show() -> None:
        table = Table("id", "name", "status", "price", "sold", "served", "anchored")
        for r in rows:
            status = r["model_status"] if r["active"] else "delisted"
            table.add_row(
                str(r["model_id"]),
                escape(r["name"] or ""),
                status,
                r["price_per_call"],
                str(r["calls_sold"]),
                str(r["calls_served"]),
                str(r.get("anchored_calls", 0)),
            )
        out.print(table)
        line(f"earnings: {units} (withdraw with `modelmarket withdraw`)")

    emit(result, as_json, show)
