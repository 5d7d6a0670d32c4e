"""UsageAnchors: gateways anchor the Merkle roots of their usage-receipt batches, and a
receipt with its proof verifies only against a root its own gateway anchored. The
receipt digest is checked against eth_account's EIP-712 hash and the trees are built by
OpenZeppelin's own StandardMerkleTree (tests/support/oz_merkle.mjs), the library the
off-chain side uses, so the contract and both references agree byte for byte."""

import json
import subprocess
from pathlib import Path

import brownie
import pytest
from brownie import ZERO_ADDRESS, chain, web3
from eth_account.messages import encode_typed_data
from eth_utils import keccak

OZ_MERKLE = Path(__file__).resolve().parents[2] / "tests" / "support" / "oz_merkle.mjs"
ZERO_ROOT = bytes(32)
MAX64 = 2**64 - 1
MAX256 = 2**256 - 1

RECEIPT_TYPE = (
    "UsageReceipt(address gateway,string inferenceId,uint64 sequence,uint256 modelId,"
    "bytes32 modelDigest,bytes32 inputDigest,bytes32 outputDigest,address buyer,"
    "uint256 price,string method,uint64 time)"
)
FIELDS = [
    {"name": "gateway", "type": "address"},
    {"name": "inferenceId", "type": "string"},
    {"name": "sequence", "type": "uint64"},
    {"name": "modelId", "type": "uint256"},
    {"name": "modelDigest", "type": "bytes32"},
    {"name": "inputDigest", "type": "bytes32"},
    {"name": "outputDigest", "type": "bytes32"},
    {"name": "buyer", "type": "address"},
    {"name": "price", "type": "uint256"},
    {"name": "method", "type": "string"},
    {"name": "time", "type": "uint64"},
]
NAMES = [f["name"] for f in FIELDS]


def reverts(name):
    """Expect a revert with the custom error `name` (brownie renders 'Name: args')."""
    return brownie.reverts(revert_pattern=rf"{name}(:.*)?")


def h(x):
    """A 32-byte value derived from `x`, for digests and roots."""
    return keccak(text=str(x))


def hexstr(b):
    return "0x" + bytes(b).hex()


def mine(blocks, seconds_apart=12):
    """Move the chain on (anvil_mine: brownie's chain.mine asks anvil for what it lacks)."""
    web3.provider.make_request("anvil_mine", [hex(blocks), hex(seconds_apart)])


def as_args(receipt):
    """The receipt (a dict) as the struct tuple the contract takes."""
    return tuple(receipt[n] for n in NAMES)


def eip712_digest(anchors, receipt):
    """eth_account's EIP-712 hash of the receipt under the contract's domain."""
    data = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "UsageReceipt": FIELDS,
        },
        "primaryType": "UsageReceipt",
        "domain": {
            "name": "ModelMarket usage",
            "version": "1",
            "chainId": chain.id,
            "verifyingContract": anchors.address,
        },
        "message": receipt,
    }
    signable = encode_typed_data(full_message=data)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def oz_tree(digests):
    """OpenZeppelin StandardMerkleTree over [[digest], ...] of type ["bytes32"]."""
    proc = subprocess.run(
        ["node", str(OZ_MERKLE)],
        input=json.dumps({"values": [[hexstr(d)] for d in digests], "types": ["bytes32"]}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)


def make_receipt(gateway, buyer, i):
    return {
        "gateway": gateway.address,
        # non-ASCII too: the contract hashes the UTF-8 bytes, as EIP-712 says
        "inferenceId": f"inf-{i:04d}-{'é' * (i % 3)}",
        "sequence": MAX64 if i == 7 else i,
        "modelId": MAX256 if i == 3 else 1 + i % 4,
        "modelDigest": h(f"model {i % 4}"),
        "inputDigest": h(f"input {i}"),
        "outputDigest": h(f"output {i}"),
        "buyer": buyer.address,
        "price": 2**200 + i if i == 5 else 10**16 * (i + 1),
        "method": "x402" if i % 2 else "prepaid",
        "time": MAX64 if i == 11 else 1_780_000_000 + i,
    }


def changed(receipt, name):
    """The receipt with one field changed to another valid value."""
    value = receipt[name]
    other = {
        "gateway": lambda v: "0x" + "11" * 20,
        "inferenceId": lambda v: v + "x",
        "sequence": lambda v: v - 1 if v else 1,
        "modelId": lambda v: v - 1 if v else 1,
        "buyer": lambda v: ZERO_ADDRESS,
        "price": lambda v: v + 1,
        "method": lambda v: "prepaid" if v == "x402" else "x402",
        "time": lambda v: v - 1,
    }
    new = other[name](value) if name in other else h(value)  # the bytes32 digests
    return {**receipt, name: new}


@pytest.fixture(scope="module")
def anchors(UsageAnchors, market, owner):
    return UsageAnchors.deploy(market, {"from": owner})


@pytest.fixture(scope="module")
def gateway(accounts):
    return accounts[3]


@pytest.fixture(scope="module")
def other_gateway(accounts):
    return accounts[5]


@pytest.fixture(scope="module")
def batch(anchors, gateway, buyer):
    """20 receipts by `gateway`, their digests and OpenZeppelin's tree of them."""
    receipts = [make_receipt(gateway, buyer, i) for i in range(20)]
    digests = [eip712_digest(anchors, r) for r in receipts]
    return receipts, digests, oz_tree(digests)


# ------------------------------------------------------------------ deployment


def test_deployment_state(anchors, market):
    assert anchors.market() == market
    assert anchors.RECEIPT_TYPEHASH() == hexstr(keccak(text=RECEIPT_TYPE))
    domain = anchors.eip712Domain()
    assert (domain[1], domain[2], domain[3], domain[4]) == (
        "ModelMarket usage",
        "1",
        chain.id,
        anchors.address,
    )


# --------------------------------------------------------------------- anchor


def test_anchor_stores_and_emits(anchors, gateway):
    root = h("batch 1")
    tx = anchors.anchor(41, root, 250, {"from": gateway})
    ev = tx.events["BatchAnchored"]
    assert ev["gateway"] == gateway
    assert ev["batchId"] == 41
    assert ev["root"] == hexstr(root)
    assert ev["count"] == 250
    block = web3.eth.get_block(tx.block_number)
    assert tuple(anchors.anchorOf(gateway, root)) == (41, tx.block_number, block.timestamp, 250)


def test_an_unanchored_root_reads_as_block_zero(anchors, gateway, other_gateway):
    anchors.anchor(1, h("batch"), 1, {"from": gateway})
    assert tuple(anchors.anchorOf(gateway, h("never"))) == (0, 0, 0, 0)
    assert tuple(anchors.anchorOf(other_gateway, h("batch"))) == (0, 0, 0, 0)


def test_the_widest_values_fit_the_slot(anchors, gateway):
    tx = anchors.anchor(MAX64, h("wide"), 2**32 - 1, {"from": gateway})
    anchor = anchors.anchorOf(gateway, h("wide"))
    assert (anchor[0], anchor[1], anchor[3]) == (MAX64, tx.block_number, 2**32 - 1)


def test_a_gateway_anchors_a_root_once(anchors, gateway):
    root = h("batch 1")
    first = anchors.anchor(1, root, 10, {"from": gateway})
    mine(5)
    with reverts("AlreadyAnchored"):
        anchors.anchor(2, root, 11, {"from": gateway})
    # the first anchor's block and time stand
    block = web3.eth.get_block(first.block_number)
    assert tuple(anchors.anchorOf(gateway, root)) == (1, first.block_number, block.timestamp, 10)


def test_another_gateway_anchors_the_same_root_separately(anchors, gateway, other_gateway):
    root = h("shared")
    first = anchors.anchor(1, root, 10, {"from": gateway})
    mine(3)
    second = anchors.anchor(9, root, 20, {"from": other_gateway})
    assert second.events["BatchAnchored"]["gateway"] == other_gateway
    assert tuple(anchors.anchorOf(gateway, root))[:2] == (1, first.block_number)
    assert tuple(anchors.anchorOf(other_gateway, root))[:2] == (9, second.block_number)
    assert anchors.anchorOf(gateway, root)[3] == 10
    assert anchors.anchorOf(other_gateway, root)[3] == 20


def test_an_empty_batch_is_refused(anchors, gateway):
    with reverts("EmptyBatch"):
        anchors.anchor(1, h("batch"), 0, {"from": gateway})
    with reverts("EmptyBatch"):
        anchors.anchor(1, ZERO_ROOT, 5, {"from": gateway})
    with reverts("EmptyBatch"):
        anchors.anchor(1, ZERO_ROOT, 0, {"from": gateway})
    assert anchors.anchorOf(gateway, h("batch"))[1] == 0
    assert anchors.anchorOf(gateway, ZERO_ROOT)[1] == 0


# -------------------------------------------------------------------- receipts


def test_receipt_digest_is_the_eip712_hash(anchors, batch):
    receipts, digests, _ = batch
    for receipt, digest in zip(receipts, digests, strict=True):
        assert anchors.receiptDigest(as_args(receipt)) == hexstr(digest)


def test_receipt_digest_depends_on_the_domain(UsageAnchors, anchors, market, owner, batch):
    receipts, digests, _ = batch
    elsewhere = UsageAnchors.deploy(market, {"from": owner})
    assert elsewhere.receiptDigest(as_args(receipts[0])) != hexstr(digests[0])
    assert elsewhere.receiptDigest(as_args(receipts[0])) == hexstr(
        eip712_digest(elsewhere, receipts[0])
    )


def test_receipt_leaf_is_openzeppelins_leaf(anchors, batch):
    receipts, _, tree = batch
    for receipt, leaf in zip(receipts, tree["leaves"], strict=True):
        assert anchors.receiptLeaf(as_args(receipt)) == leaf


def test_every_receipt_verifies_with_its_proof(anchors, gateway, batch):
    receipts, _, tree = batch
    anchors.anchor(1, tree["root"], len(receipts), {"from": gateway})
    for receipt, proof in zip(receipts, tree["proofs"], strict=True):
        assert anchors.verifyReceipt(as_args(receipt), tree["root"], proof) is True


def test_a_changed_field_does_not_verify(anchors, gateway, batch):
    receipts, _, tree = batch
    anchors.anchor(1, tree["root"], len(receipts), {"from": gateway})
    for i in (0, 7):
        for name in NAMES:
            forged = changed(receipts[i], name)
            assert forged != receipts[i]
            assert anchors.verifyReceipt(as_args(forged), tree["root"], tree["proofs"][i]) is False


def test_another_receipts_proof_does_not_verify(anchors, gateway, batch):
    receipts, _, tree = batch
    anchors.anchor(1, tree["root"], len(receipts), {"from": gateway})
    n = len(receipts)
    for i in range(n):
        for j in (i + 1, i + 2):
            proof = tree["proofs"][j % n]
            assert anchors.verifyReceipt(as_args(receipts[i]), tree["root"], proof) is False
    assert anchors.verifyReceipt(as_args(receipts[0]), tree["root"], []) is False


def test_a_root_anchored_by_another_gateway_proves_nothing(anchors, gateway, other_gateway, batch):
    # other_gateway anchors a tree of receipts naming `gateway`: they must not verify
    receipts, _, tree = batch
    anchors.anchor(1, tree["root"], len(receipts), {"from": other_gateway})
    for receipt, proof in zip(receipts, tree["proofs"], strict=True):
        assert anchors.verifyReceipt(as_args(receipt), tree["root"], proof) is False
    # ...until the receipts' own gateway anchors the same root
    anchors.anchor(1, tree["root"], len(receipts), {"from": gateway})
    assert anchors.verifyReceipt(as_args(receipts[0]), tree["root"], tree["proofs"][0]) is True


def test_a_root_never_anchored_proves_nothing(anchors, gateway, batch):
    receipts, _, tree = batch
    anchors.anchor(1, h("some other batch"), 3, {"from": gateway})
    for receipt, proof in zip(receipts, tree["proofs"], strict=True):
        assert anchors.verifyReceipt(as_args(receipt), tree["root"], proof) is False
    assert anchors.verifyReceipt(as_args(receipts[0]), ZERO_ROOT, []) is False


def test_a_batch_of_one_is_its_own_root(anchors, gateway, buyer):
    receipt = make_receipt(gateway, buyer, 99)
    tree = oz_tree([eip712_digest(anchors, receipt)])
    assert tree["proofs"] == [[]] and tree["root"] == tree["leaves"][0]
    anchors.anchor(1, tree["root"], 1, {"from": gateway})
    assert anchors.verifyReceipt(as_args(receipt), tree["root"], []) is True
    other = make_receipt(gateway, buyer, 98)
    assert anchors.verifyReceipt(as_args(other), tree["root"], []) is False
