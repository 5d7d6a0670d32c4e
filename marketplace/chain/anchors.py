"""The UsageAnchors contract: a gateway anchors the Merkle root of a batch of usage
receipts under its own address; anyone reads whether (and when) a root was anchored by
a gateway, and can have the contract check a receipt's proof itself."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract

from marketplace import errors
from marketplace.chain.artifacts import load_artifact
from marketplace.chain.reverts import revert_errors
from marketplace.chain.transactions import Signer, rpc_errors, send

BATCH_ANCHORED = Web3.keccak(text="BatchAnchored(address,uint64,bytes32,uint32)")


class Anchor(NamedTuple):
    """A root as the contract holds it; block_number 0: never anchored."""

    batch_id: int
    block_number: int
    timestamp: int
    receipts: int


class Anchors:
    """Typed calls on one UsageAnchors deployment (writes need a signer: the gateway)."""

    def __init__(
        self,
        w3: Web3,
        address: str,
        artifacts_dir: Path,
        *,
        signer: Signer | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.w3 = w3
        self.artifacts_dir = artifacts_dir
        self.signer = signer
        self.timeout = timeout
        abi = load_artifact(artifacts_dir, "UsageAnchors").abi
        self.contract = w3.eth.contract(address=to_checksum_address(address), abi=abi)

    @property
    def address(self) -> str:
        return str(self.contract.address)

    def anchor(self, batch_id: int, root: bytes, count: int) -> tuple[str, int]:
        """Anchor `root` from the signer's address: (transaction hash, block). The
        contract refuses a root this gateway anchored before (AlreadyAnchored), so a
        batch sent twice is anchored once."""
        if self.signer is None:
            raise errors.ConfigurationError("anchoring needs the gateway's key")
        receipt = send(
            self.w3,
            self.contract.functions.anchor(batch_id, root, count),
            self.signer,
            self.artifacts_dir,
            timeout=self.timeout,
        )
        return HexBytes(receipt["transactionHash"]).to_0x_hex(), int(receipt["blockNumber"])

    def anchor_of(self, gateway: str, root: bytes) -> Anchor:
        """What the contract holds for (`gateway`, `root`)."""
        with rpc_errors(), revert_errors(self.artifacts_dir):
            got = self.contract.functions.anchorOf(to_checksum_address(gateway), root).call()
        return Anchor(*(int(x) for x in got))

    def anchored_tx(self, gateway: str, root: bytes, block: int) -> str | None:
        """The transaction that anchored (`gateway`, `root`) in `block`, from its event."""
        topics = [
            BATCH_ANCHORED.to_0x_hex(),
            "0x" + HexBytes(gateway).rjust(32, b"\0").hex(),
            None,
            "0x" + root.hex(),
        ]
        with rpc_errors():
            logs = self.w3.eth.get_logs(
                {
                    "address": self.contract.address,
                    "topics": topics,
                    "fromBlock": block,
                    "toBlock": block,
                }
            )
        return HexBytes(logs[0]["transactionHash"]).to_0x_hex() if logs else None

    def verify_receipt(self, receipt: tuple[object, ...], root: bytes, proof: list[bytes]) -> bool:
        """The contract's own check: `root` anchored by the receipt's gateway and the
        proof leads from the receipt's leaf to it (`MerkleProof.verify`)."""
        with rpc_errors(), revert_errors(self.artifacts_dir):
            return bool(self.contract.functions.verifyReceipt(receipt, root, proof).call())

    def market(self) -> str:
        """The marketplace these receipts are for."""
        with rpc_errors():
            return str(self.contract.functions.market().call())

    def _market(self) -> Contract:
        abi = load_artifact(self.artifacts_dir, "ModelMarketplace").abi
        return self.w3.eth.contract(address=to_checksum_address(self.market()), abi=abi)

    def listing_cid(self, model_id: int) -> str:
        """The model CID the marketplace lists as `model_id` (ModelNotFound otherwise)."""
        with rpc_errors(), revert_errors(self.artifacts_dir):
            return str(self._market().functions.getListing(model_id).call()[4])

    def is_settler(self, gateway: str) -> bool:
        """Whether the marketplace's owner allows `gateway` to settle x402 payments."""
        with rpc_errors():
            return bool(self._market().functions.settlers(to_checksum_address(gateway)).call())

    def chain_id(self) -> int:
        """The chain the node serves."""
        with rpc_errors():
            return int(self.w3.eth.chain_id)

    def has_code(self) -> bool:
        """Whether a contract lives at the address."""
        with rpc_errors():
            return len(self.w3.eth.get_code(self.contract.address)) > 0
