"""OpenZeppelin's standard Merkle tree (`@openzeppelin/merkle-tree` 1.x, "standard-v1")
over bytes32 values, so `MerkleProof.verify` in Solidity accepts its proofs.

A leaf is keccak256(keccak256(abi.encode(value))): hashed twice, so no leaf can pass
for an inner node. Leaves are sorted by hash, laid out as a complete binary tree in one
array (the root at 0, leaves at the end in reverse), and each inner node hashes its
children's pair in sorted order. Tested against the npm package as the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

from sha3 import keccak_256  # type: ignore[import-untyped]


def keccak(data: bytes) -> bytes:
    """keccak256 in C (safe-pysha3): ~1.5 us here against eth-hash's pycryptodome 6-11
    us; a batch of 10,000 receipts takes ~60,000 of them."""
    return bytes(keccak_256(data).digest())


def leaf_hash(value: bytes) -> bytes:
    """The leaf of one bytes32 value (`StandardMerkleTree.leafHash([value])`)."""
    if len(value) != 32:
        raise ValueError("a leaf value is 32 bytes")
    return keccak(keccak(value))  # abi.encode(bytes32) is the value itself


def hash_pair(a: bytes, b: bytes) -> bytes:
    """An inner node: the keccak256 of its children, the smaller first."""
    return keccak(a + b if a < b else b + a)


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root `proof` leads to from `leaf` (`MerkleProof.processProof`)."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node


class MerkleTree:
    """A tree over bytes32 values, in OpenZeppelin's layout (its `tree` array)."""

    def __init__(self, values: Sequence[bytes]) -> None:
        if not values:
            raise ValueError("a Merkle tree needs at least one value")
        leaves = [leaf_hash(v) for v in values]
        order = sorted(range(len(leaves)), key=leaves.__getitem__)
        size = 2 * len(leaves) - 1
        tree: list[bytes] = [b""] * size
        # leaf i of the sorted order sits at size - 1 - i
        self._position = [0] * len(values)
        for rank, index in enumerate(order):
            tree[size - 1 - rank] = leaves[index]
            self._position[index] = size - 1 - rank
        for i in range(size - 1 - len(leaves), -1, -1):
            tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        self.tree = tree
        self.leaves = leaves  # in the order of the values given

    @property
    def root(self) -> bytes:
        """The root (what goes on-chain)."""
        return self.tree[0]

    def proof(self, index: int) -> list[bytes]:
        """The proof of the `index`-th value given (its siblings, leaf to root)."""
        i = self._position[index]
        proof = []
        while i > 0:
            proof.append(self.tree[i + 1 if i % 2 else i - 1])
            i = (i - 1) // 2
        return proof
