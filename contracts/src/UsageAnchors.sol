// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title UsageAnchors
/// @notice Gateways anchor the Merkle roots of their usage-receipt batches here, so a
///         buyer or seller holding one receipt and its proof can show the gateway
///         committed to it, and when, without trusting the gateway's database.
/// @dev A gateway is its address: anyone may anchor, each under their own address, and
///      a root proves only what the address that anchored it committed to. There is no
///      owner and no pause: nothing here moves money, and a commitment that could be
///      blocked or removed would prove less. Leaves are OpenZeppelin StandardMerkleTree
///      leaves of the receipt's EIP-712 digest, so OpenZeppelin's merkle-tree library
///      (npm) builds the trees and proofs off-chain.
contract UsageAnchors is EIP712 {
    /// @notice One inference call as the gateway served and charged it.
    /// @dev Typed under this contract's EIP-712 domain ("ModelMarket usage", "1"); not
    ///      signed one by one: the root the gateway anchors commits to its whole batch.
    struct UsageReceipt {
        address gateway;
        string inferenceId;
        uint64 sequence;
        uint256 modelId;
        bytes32 modelDigest;
        bytes32 inputDigest;
        bytes32 outputDigest;
        address buyer;
        uint256 price;
        string method;
        uint64 time;
    }

    /// @notice The EIP-712 type hash of `UsageReceipt`.
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "UsageReceipt(address gateway,string inferenceId,uint64 sequence,uint256 modelId,bytes32 modelDigest,bytes32 inputDigest,bytes32 outputDigest,address buyer,uint256 price,string method,uint64 time)"
    );

    /// @notice Where and when a batch root was anchored.
    /// @dev 64 + 64 + 64 + 32 bits: one storage slot, so an anchor costs one fresh SSTORE.
    ///      `blockNumber` is never 0 for a stored anchor, so 0 means "never anchored".
    struct Anchor {
        uint64 batchId;
        uint64 blockNumber;
        uint64 timestamp;
        uint32 count;
    }

    /// @notice The ModelMarketplace these receipts are for.
    /// @dev Recorded so a verifier can tell which market a deployment of this contract
    ///      serves; nothing here calls it.
    address public immutable market;

    // Keyed by gateway first: a root anchored by one address says nothing about another
    // gateway's receipts, and no one can claim (or block) another gateway's root.
    mapping(address gateway => mapping(bytes32 root => Anchor)) private _anchors;

    /// @notice `gateway` committed to a batch of `count` receipts whose tree root is `root`.
    event BatchAnchored(
        address indexed gateway, uint64 indexed batchId, bytes32 indexed root, uint32 count
    );

    /// @notice `gateway` already anchored `root`: the first anchor's block and time stand.
    error AlreadyAnchored(address gateway, bytes32 root);
    /// @notice A batch needs at least one receipt and a non-zero root.
    error EmptyBatch();

    /// @param market_ The ModelMarketplace whose usage the receipts record.
    constructor(address market_) EIP712("ModelMarket usage", "1") {
        market = market_;
    }

    /// @notice Anchor the root of a batch of usage receipts, as the gateway `msg.sender`.
    /// @dev Each (gateway, root) pair once: re-anchoring would move the recorded block and
    ///      time, and those are what an anchor proves. `batchId` and `count` are the
    ///      gateway's own labels, stored and emitted for indexers, not checked.
    /// @param batchId The gateway's number for the batch.
    /// @param root The StandardMerkleTree root over the batch's receipt digests.
    /// @param count How many receipts the batch holds (at least one).
    function anchor(uint64 batchId, bytes32 root, uint32 count) external {
        if (count == 0 || root == bytes32(0)) revert EmptyBatch();
        Anchor storage slot = _anchors[msg.sender][root];
        if (slot.blockNumber != 0) revert AlreadyAnchored(msg.sender, root);
        _anchors[msg.sender][root] = Anchor({
            batchId: batchId,
            blockNumber: uint64(block.number),
            timestamp: uint64(block.timestamp),
            count: count
        });
        emit BatchAnchored(msg.sender, batchId, root, count);
    }

    /// @notice The anchor of `root` by `gateway`; `blockNumber == 0` when never anchored.
    function anchorOf(address gateway, bytes32 root) external view returns (Anchor memory) {
        return _anchors[gateway][root];
    }

    /// @notice The EIP-712 digest of a receipt under this contract's domain: the value
    ///         its batch tree commits to (what a wallet would sign).
    function receiptDigest(UsageReceipt calldata r) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH,
                    r.gateway,
                    keccak256(bytes(r.inferenceId)),
                    r.sequence,
                    r.modelId,
                    r.modelDigest,
                    r.inputDigest,
                    r.outputDigest,
                    r.buyer,
                    r.price,
                    keccak256(bytes(r.method)),
                    r.time
                )
            )
        );
    }

    /// @notice The receipt's leaf in its batch tree: OpenZeppelin StandardMerkleTree's leaf
    ///         of the single value `[receiptDigest(r)]` of type `["bytes32"]`.
    /// @dev Hashed twice, as StandardMerkleTree does, so no 64-byte inner node can pass
    ///      for a leaf (second preimage).
    function receiptLeaf(UsageReceipt calldata r) public view returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(receiptDigest(r)))));
    }

    /// @notice True iff `root` was anchored by the receipt's own gateway and `proof`
    ///         shows the receipt's leaf is in the tree with that root.
    /// @dev The anchor is looked up under `r.gateway`, so a root anchored by anyone else
    ///      (who could put any receipt naming any gateway in a tree) proves nothing.
    function verifyReceipt(UsageReceipt calldata r, bytes32 root, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        if (_anchors[r.gateway][root].blockNumber == 0) return false;
        return MerkleProof.verifyCalldata(proof, root, receiptLeaf(r));
    }
}
