"""Usage receipts off the chain: the Python Merkle tree against OpenZeppelin's npm
package (the reference the contract is tested with), the hand-encoded EIP-712 digest
against eth_account's, the header's round trip, every malformed field refused, and the
canonical tensor digest."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.digests import tensors_digest
from marketplace.usage.errors import InvalidReceipt
from marketplace.usage.merkle import MerkleTree, process_proof
from marketplace.usage.receipts import Domain, Receipt, from_header, from_json, header, to_json

OZ_MERKLE = Path(__file__).resolve().parents[1] / "support" / "oz_merkle.mjs"
DOMAIN = Domain(31337, "0x" + "ab" * 20)


def openzeppelin(values: list[bytes]) -> dict[str, object]:
    doc = {"values": [["0x" + v.hex()] for v in values]}
    done = subprocess.run(
        ["node", str(OZ_MERKLE)], input=json.dumps(doc), capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100])
def test_the_tree_is_openzeppelins_standard_tree(size: int):
    values = [os.urandom(32) for _ in range(size)]
    if size > 3:
        values[1] = values[0]  # duplicate values are leaves of their own, as in the package
    tree = MerkleTree(values)
    ref = openzeppelin(values)
    assert "0x" + tree.root.hex() == ref["root"]
    assert ["0x" + leaf.hex() for leaf in tree.leaves] == ref["leaves"]
    for i in range(size):
        assert ["0x" + p.hex() for p in tree.proof(i)] == ref["proofs"][i]  # type: ignore[index]
        assert process_proof(tree.leaves[i], tree.proof(i)) == tree.root


def test_a_proof_leads_elsewhere_for_another_leaf():
    tree = MerkleTree([os.urandom(32) for _ in range(10)])
    assert process_proof(tree.leaves[3], tree.proof(4)) != tree.root


uint64 = st.integers(0, 2**64 - 1)
uint256 = st.integers(0, 2**256 - 1)
digest = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
address = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
receipts = st.builds(
    Receipt,
    gateway=address,
    inference_id=st.text("0123456789abcdef", min_size=1, max_size=32),
    sequence=uint64,
    model_id=uint256,
    model_digest=digest,
    input_digest=digest,
    output_digest=digest,
    buyer=address,
    price=uint256,
    method=st.sampled_from(["prepaid", "x402"]),
    time=uint64,
)


@settings(max_examples=60, deadline=None)
@given(receipts, st.integers(1, 2**64), address)
def test_the_digest_is_eip712_as_eth_account_computes_it(receipt: Receipt, chain: int, at: str):
    domain = Domain(chain, at)
    reference = _hash_eip191_message(encode_typed_data(full_message=receipt.typed_data(domain)))
    assert receipt.digest(domain) == bytes(reference)


@settings(max_examples=60, deadline=None)
@given(receipts, st.integers(1, 2**63), address)
def test_every_form_round_trips(receipt: Receipt, chain: int, at: str):
    domain = Domain(chain, at.lower())  # the header's head is made once per domain
    assert from_header(header(receipt, domain)) == (receipt, domain)
    assert from_json(to_json(receipt, DOMAIN)) == (receipt, DOMAIN)
    assert from_json({"receipt": to_json(receipt, DOMAIN)}) == (receipt, DOMAIN)


def test_each_field_changed_changes_the_digest():
    base = Receipt(
        "0x" + "11" * 20, "ab" * 16, 7, 1, *("0x" + c * 32 for c in ("01", "02", "03")),
        "0x" + "22" * 20, 10**15, "prepaid", 1_800_000_000,
    )  # fmt: skip
    changed = {
        "gateway": "0x" + "12" * 20, "inference_id": "ab" * 15 + "ac", "sequence": 8,
        "model_id": 2, "model_digest": "0x" + "04" * 32, "input_digest": "0x" + "05" * 32,
        "output_digest": "0x" + "06" * 32, "buyer": "0x" + "23" * 20, "price": 10**15 + 1,
        "method": "x402", "time": 1_800_000_001,
    }  # fmt: skip
    assert set(changed) == set(Receipt._fields)
    digests = {base.digest(DOMAIN)} | {
        base._replace(**{k: v}).digest(DOMAIN) for k, v in changed.items()
    }
    assert len(digests) == 1 + len(changed)
    assert base.digest(Domain(1, DOMAIN.anchors)) != base.digest(DOMAIN)  # another chain


GOOD = to_json(
    Receipt("0x" + "11" * 20, "ab", 1, 1, *("0x" + "01" * 32,) * 3, "0x" + "22" * 20, 5, "x402", 9),
    DOMAIN,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gateway", "0x1234"), ("gateway", 5), ("buyer", None), ("sequence", -1),
        ("sequence", 2**64), ("modelId", "1e3"), ("price", 2**256), ("price", True),
        ("time", 1.5), ("modelDigest", "0x" + "zz" * 32), ("inputDigest", "0x" + "00" * 31),
        ("outputDigest", "00" * 33), ("method", "free"), ("inferenceId", ""),
        ("inferenceId", "x" * 65),
    ],
)  # fmt: skip
def test_a_malformed_field_is_refused_by_name(field: str, value: object):
    doc = json.loads(json.dumps(GOOD))
    doc["message"][field] = value
    with pytest.raises(InvalidReceipt, match=field):
        from_json(doc)


@pytest.mark.parametrize("junk", ["", "!!!", "bm90IGpzb24", "WzEsMl0"])  # "not json", "[1,2]"
def test_a_header_that_is_not_a_receipt_is_refused(junk: str):
    with pytest.raises(InvalidReceipt):
        from_header(junk)


def test_another_domain_name_is_refused():
    doc = json.loads(json.dumps(GOOD))
    doc["domain"]["name"] = "Someone else"
    with pytest.raises(InvalidReceipt, match="domain"):
        from_json(doc)


def test_the_tensor_digest_is_canonical():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = tensors_digest({"a": x, "b": np.array([1, 2], np.int64)})
    assert tensors_digest({"b": np.array([1, 2], np.int64), "a": x}) == base  # any order
    assert tensors_digest({"a": x.astype(">f4"), "b": np.array([1, 2], ">i8")}) == base
    assert tensors_digest({"a": np.asfortranarray(x), "b": np.array([1, 2])}) == base
    others = [
        {"a": x.reshape(4, 3), "b": np.array([1, 2])},  # shape
        {"a": x.astype(np.float64), "b": np.array([1, 2])},  # dtype
        {"c": x, "b": np.array([1, 2])},  # name
        {"a": x + 1, "b": np.array([1, 2])},  # a value
        {"a": x},  # a tensor fewer
    ]
    assert len({base, *(tensors_digest(o) for o in others)}) == 1 + len(others)
    words = tensors_digest({"s": np.array(["ab", "c"], dtype=object)})
    assert words != tensors_digest({"s": np.array(["a", "bc"], dtype=object)})


def test_the_tensor_digest_is_the_one_receipts_already_commit_to():
    """Fixed vectors: a receipt issued before any change to the encoder must still
    verify (the digests were computed by the first implementation)."""
    iris = {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    mixed = {
        "label": np.array([0, 2], np.int64),
        "p": np.arange(6, dtype=">f4").reshape(2, 3).T,  # big-endian, not C-contiguous
        "s": np.array(["ab", b"c"], dtype=object),
        "e": np.zeros((0, 3), np.float16),
    }
    assert tensors_digest(iris).hex() == (
        "34f300b11663a54097af36c81926dff085f6f08581f21169910d61550a6e8ecf"
    )
    assert tensors_digest(mixed).hex() == (
        "8e4a99d378316c0791026894fd8ffe2566ffd6563b209b873e1b4fc9cd2811a0"
    )
