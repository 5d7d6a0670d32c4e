"""The audit command: `modelmarket verify`, which trusts the chain and the receipt,
nothing the gateway says about itself."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from marketplace import errors
from marketplace.cli.group import EXIT_REFUTED, domain_errors, main
from marketplace.cli.output import emit, line
from marketplace.config import load_settings

INFERENCE_ID = re.compile(r"[0-9a-f]{8,32}")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
MARKS = {True: "ok  ", False: "FAIL", None: "note"}


def _load(what: str) -> dict[str, Any] | str:
    """The receipt document (or the header's text) from a file, or from the gateway."""
    path = Path(what)
    if path.is_file():
        text = path.read_text().strip()
        try:
            doc = json.loads(text)
        except ValueError:
            return text  # the X-Usage-Receipt header's text, saved as it came
        if not isinstance(doc, dict):
            raise errors.BadRequest(f"{what} does not hold a receipt (a JSON object)")
        return doc
    if not INFERENCE_ID.fullmatch(what):
        raise errors.BadRequest(f"{what!r} is neither a receipt file nor an inference id")
    from marketplace.cli.buyer import client

    return client(load_settings()).usage(what)


@main.command()
@click.argument("receipts", metavar="RECEIPT.json|INFERENCE_ID...", nargs=-1, required=True)
@click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The call's input (as `modelmarket infer --input` takes it): re-run the listed"
    " model on it and compare the output digest (one receipt only).",
)
@click.option(
    "--evidence",
    "evidence_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where a failed receipt's evidence file (evidence-<inference id>.json) goes.",
)
@click.option(
    "--anchors",
    "anchors_address",
    help="The UsageAnchors contract you trust (the marketplace publishes it; default: the"
    " one in your deployment record). A receipt naming another is refused.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON.")
@domain_errors
def verify(
    receipts: tuple[str, ...],
    input_path: Path | None,
    evidence_dir: Path,
    anchors_address: str | None,
    as_json: bool,
) -> None:
    """Check paid calls' usage receipts against the chain: each one's fields, its proof
    against the root its gateway anchored, the model digest against the listing's CID;
    with --input, re-run the model (fetched by CID, every byte verified) and compare the
    output digest. Exits 6 when a receipt does not hold, with the evidence a dispute
    needs (the gateway's claim, its proof and anchor, the re-run) printed and saved.

    \b
    Examples:
      modelmarket infer 1 --input in.json --save-receipt r.json
      modelmarket verify r.json --input in.json
      modelmarket verify 3e9f19f37c7fe748c436000000000000
    """
    if input_path is not None and len(receipts) != 1:
        raise errors.BadRequest("--input re-runs one call: give one receipt with it")
    from marketplace.chain.anchors import Anchors
    from marketplace.chain.endpoint import rpc_url_for
    from marketplace.chain.transactions import connect

    settings = load_settings()
    trusted, market = _trusted(settings, anchors_address)
    w3 = connect(rpc_url_for(settings), timeout=settings.rpc_timeout, retries=settings.rpc_retries)
    anchors = Anchors(w3, trusted, settings.artifacts_dir)
    results, failed = [], []
    for what in receipts:
        claim, verdict = _verify_one(settings, anchors, market, what, input_path)
        results.append(
            {
                "verified": verdict.ok,
                "inference_id": claim.inference_id,
                "checks": [
                    {"name": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks
                ],
                **({} if verdict.ok else {"evidence": verdict.evidence}),
            }
        )
        if not verdict.ok:
            evidence_dir.mkdir(parents=True, exist_ok=True)
            target = evidence_dir / f"evidence-{claim.inference_id}.json"
            target.write_bytes(orjson.dumps(verdict.evidence, option=orjson.OPT_INDENT_2))
            failed.append((claim.inference_id, next(c for c in verdict.checks if c.ok is False)))

    def show() -> None:
        for result in results:
            for check in result["checks"]:
                line(f"{MARKS[check['ok']]}  {check['name']:<9}{check['detail']}")
            if result["verified"]:
                line(f"receipt {result['inference_id']}: verified against the chain")
            else:
                line("evidence for a dispute (the gateway's claim, its proof, the re-run):")
                line(orjson.dumps(result["evidence"], option=orjson.OPT_INDENT_2).decode())

    emit(results if len(results) > 1 else results[0], as_json, show)
    if failed:
        first, check = failed[0]
        click.echo(
            f"error: {len(failed)} of {len(results)} receipts do not hold ({first}: {check.name});"
            f" evidence in {evidence_dir} [receipt_refuted]",
            err=True,
        )
        sys.exit(EXIT_REFUTED)


def _trusted(settings: Any, given: str | None) -> tuple[str, str | None]:
    """The UsageAnchors address the verifier trusts, and its marketplace when known:
    `--anchors`, else the deployment record's; never the receipt's own."""
    from eth_utils.address import to_checksum_address

    from marketplace.bootstrap import load_deployment

    try:
        record = load_deployment(settings)
    except errors.ConfigurationError:
        record = None
    if given is not None:
        if not ADDRESS.fullmatch(given):
            raise errors.BadRequest("--anchors must be a 0x address")
        known = record is not None and (record.anchors or "").lower() == given.lower()
        return to_checksum_address(given), record.marketplace if known and record else None
    if record is None or record.anchors is None:
        raise errors.ConfigurationError(
            "name the UsageAnchors contract you trust: --anchors ADDRESS (the marketplace"
            " publishes it), or a deployment record that has it"
        )
    return record.anchors, record.marketplace


def _verify_one(
    settings: Any, anchors: Any, market: str | None, what: str, input_path: Path | None
) -> tuple[Any, Any]:
    from marketplace.bootstrap import make_store, runtime_settings
    from marketplace.usage import receipts
    from marketplace.usage.verify import check_receipt, load_inputs, parse_proof, rerun
    from storage.cache import ModelCache

    doc = _load(what)
    if isinstance(doc, str):
        claim, domain = receipts.from_header(doc)
        doc = {}
    else:
        claim, domain = receipts.from_json(doc)
    proof_doc: dict[str, Any] = doc if "proof" in doc else {}
    if not proof_doc:  # the header carries no proof: the gateway's, checked against the chain
        from marketplace.cli.buyer import client

        leaf = "0x" + claim.leaf(domain).hex()
        proof_doc = client(settings, signed_in=False).usage_proof(claim.inference_id, leaf)
    proof = parse_proof(proof_doc.get("proof") or [])
    verdict = check_receipt(claim, domain, proof, anchors, market)
    if input_path is not None and verdict.ok:
        models = ModelCache(settings.cache_dir, make_store(settings), settings.cache_max_bytes)
        model_cid = anchors.listing_cid(claim.model_id)
        inputs, asked = load_inputs(input_path)
        rerun(verdict, claim, inputs, models, runtime_settings(settings), model_cid, asked)
    return claim, verdict
