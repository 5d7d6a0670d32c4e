"""Checking a usage receipt with nothing but the chain: its fields, its inclusion proof
against a root the receipt's gateway anchored (read from UsageAnchors, not from the
gateway), the contract's own `verifyReceipt`, the model digest against the listing's
CID; and, given the input, a re-run of the model fetched by its CID (every byte
verified) with the session options the gateway uses (the thread count is the
verifier's: `bench.rerun` measured it changes no output), its output digest compared."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference import codecs
from inference.digests import tensors_digest
from inference.runtime import RuntimeSettings
from inference.sessions import SessionCache
from marketplace import errors
from marketplace.chain.anchors import Anchors
from marketplace.usage.errors import InvalidReceipt
from marketplace.usage.merkle import process_proof
from marketplace.usage.receipts import Domain, Receipt, to_json
from storage import cid
from storage.cache import ModelCache


@dataclass
class Check:
    """One thing checked: passed (True), failed (False) or only said (None)."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Verdict:
    """What `verify` found, and the evidence a dispute needs when something failed."""

    checks: list[Check] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def add(self, name: str, ok: bool | None, detail: str) -> bool | None:
        self.checks.append(Check(name, ok, detail))
        return ok


def check_receipt(
    receipt: Receipt,
    domain: Domain,
    proof: list[bytes],
    anchors: Anchors,
    market: str | None = None,
) -> Verdict:
    """Check `receipt` and its `proof` against the chain, through `anchors`: the
    UsageAnchors the verifier trusts (never the contract the receipt names: a hostile
    gateway can name one of its own that answers yes), of `market` when known."""
    verdict = Verdict()
    verdict.evidence["receipt"] = to_json(receipt, domain)
    verdict.evidence["proof"] = ["0x" + p.hex() for p in proof]
    chain = anchors.chain_id()
    problems = []
    if domain.anchors.lower() != anchors.address.lower():
        problems.append(
            f"it names UsageAnchors {domain.anchors}, not the trusted {anchors.address}"
        )
    if chain != domain.chain_id:
        problems.append(f"it names chain {domain.chain_id}; the node serves chain {chain}")
    if not problems and not anchors.has_code():
        problems.append(f"no contract at {anchors.address} on this chain")
    if not problems and market is not None and anchors.market().lower() != market.lower():
        problems.append(f"UsageAnchors {anchors.address} is not for marketplace {market}")
    if not verdict.add(
        "domain",
        not problems,
        "; ".join(problems) or f"chain {chain}, UsageAnchors {anchors.address}",
    ):
        return verdict
    leaf = receipt.leaf(domain)
    root = process_proof(leaf, proof)
    held = anchors.anchor_of(receipt.gateway, root)
    verdict.evidence["root"] = "0x" + root.hex()
    if held.block_number:
        tx = anchors.anchored_tx(receipt.gateway, root, held.block_number)
        verdict.evidence["anchor"] = {"block": held.block_number, "tx": tx, "batch": held.batch_id}
        verdict.add(
            "anchored",
            True,
            f"root 0x{root.hex()} anchored by {receipt.gateway} in block {held.block_number}"
            f" (batch {held.batch_id}, {held.receipts} receipts, tx {tx})",
        )
    else:
        verdict.add(
            "anchored",
            False,
            f"the receipt and its proof lead to root 0x{root.hex()}, which {receipt.gateway}"
            " never anchored: a field was changed, the proof is not this receipt's, or its"
            " batch is not on-chain (yet)",
        )
    as_tuple = _abi_tuple(receipt)
    verdict.add(
        "contract",
        anchors.verify_receipt(as_tuple, root, proof),
        "UsageAnchors.verifyReceipt (MerkleProof.verify on-chain) agrees"
        if held.block_number
        else "UsageAnchors.verifyReceipt refuses it too",
    )
    try:
        listed = anchors.listing_cid(receipt.model_id)
        digest = "0x" + cid.digest(listed).hex()
        verdict.add(
            "model",
            digest == receipt.model_digest,
            f"model {receipt.model_id} is listed as {listed}"
            + ("" if digest == receipt.model_digest else f" (digest {digest}), not the receipt's"),
        )
    except errors.ModelNotFound:
        verdict.add("model", False, f"the marketplace lists no model {receipt.model_id}")
    settler = anchors.is_settler(receipt.gateway)
    verdict.add(
        "gateway",
        None,
        f"{receipt.gateway} is {'' if settler else 'not '}a settler the marketplace's owner allows",
    )
    return verdict


def rerun(
    verdict: Verdict,
    receipt: Receipt,
    inputs: dict[str, np.ndarray],
    models: ModelCache,
    runtime: RuntimeSettings,
    model_cid: str,
    outputs_asked: list[str] | None = None,
) -> dict[str, np.ndarray] | None:
    """Fetch the listed model by its CID (verified), run it on `inputs` as the gateway
    does (the same decoding, dtype checks and onnxruntime settings) and compare both
    digests with the receipt's. Returns the outputs (None if the input is not the paid one)."""
    path = models.get(model_cid)
    sessions = SessionCache(1 << 40, runtime)
    model = sessions.get(model_cid, path)
    # as `modelmarket infer` sends them: each input in the model's own datatype
    types = {spec.name: codecs.NUMPY_TYPES.get(spec.datatype) for spec in model.info.inputs}
    inputs = {n: np.asarray(v, dtype=types.get(n)) for n, v in inputs.items()}
    body, headers = codecs.encode_request(inputs)
    length = headers.get(codecs.HEADER_LENGTH)
    decoded = codecs.decode_request(body, int(length) if length else None)
    arrays = codecs.check_inputs(model.info, decoded)
    got_in = "0x" + tensors_digest(arrays).hex()
    if not verdict.add(
        "input",
        got_in == receipt.input_digest,
        "the input is the one paid for"
        if got_in == receipt.input_digest
        else f"the input's digest is {got_in}, not the receipt's: not the call's input",
    ):
        return None
    outputs = sessions.run(model, arrays, outputs_asked or None)  # what the call asked for
    got_out = "0x" + tensors_digest(outputs).hex()
    same = got_out == receipt.output_digest
    verdict.evidence["rerun"] = {
        "model_cid": model_cid,
        "onnxruntime": runtime_description(runtime),
        "output_digest": got_out,
        "outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()},
    }
    verdict.add(
        "rerun",
        same,
        "the re-run's output digest equals the receipt's (bit-exact)"
        if same
        else f"the re-run's output digest is {got_out}; the receipt claims"
        f" {receipt.output_digest}: the answer did not come from this model on this input",
    )
    return outputs


def runtime_description(runtime: RuntimeSettings) -> str:
    """How the re-run ran, for the evidence."""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}, {runtime.intra_op_threads} intra-op threads"


def _abi_tuple(r: Receipt) -> tuple[Any, ...]:
    from eth_utils.address import to_checksum_address

    return (
        to_checksum_address(r.gateway),
        r.inference_id,
        r.sequence,
        r.model_id,
        bytes.fromhex(r.model_digest[2:]),
        bytes.fromhex(r.input_digest[2:]),
        bytes.fromhex(r.output_digest[2:]),
        to_checksum_address(r.buyer),
        r.price,
        r.method,
        r.time,
    )


def parse_proof(items: Any) -> list[bytes]:
    """A proof from its JSON (a list of 0x hex bytes32); InvalidReceipt otherwise."""
    if not isinstance(items, list) or len(items) > 64:
        raise InvalidReceipt("the proof must be a list of at most 64 hashes")
    proof = []
    for item in items:
        if not isinstance(item, str) or not re.fullmatch(r"0x[0-9a-fA-F]{64}", item):
            raise InvalidReceipt("each proof entry must be 32 bytes of 0x hex")
        proof.append(bytes.fromhex(item[2:]))
    return proof


def load_inputs(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Inputs from a JSON object of input name -> array (as `modelmarket infer` takes),
    or an OIP v2 request body ({"inputs": [...]}, with the `outputs` it asked for: the
    receipt's output digest covers those only)."""
    import json

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        raise errors.BadRequest(f"{path} is not a JSON file") from None
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
        decoded = codecs.decode_request(path.read_bytes(), None)
        return dict(decoded.inputs), decoded.outputs or None
    if not isinstance(doc, dict):
        raise errors.BadRequest(f"{path} must hold an object: input name -> array")
    return {str(k): np.asarray(v) for k, v in doc.items()}, None
