// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

/// @title ERC3009
/// @notice EIP-3009 transfers with authorization, as USDC implements them: the holder
///         signs a transfer off-chain (EIP-712) and anyone submits it. x402's `exact`
///         scheme on EVM pays with these.
/// @dev Nonces are random 32-byte values, each usable once per authorizer, so many
///      authorizations can be outstanding at once and none waits for another. Both the
///      (v, r, s) form and the bytes form (which also takes ERC-1271 contract-wallet
///      signatures, via SignatureChecker) are provided, as in USDC v2.2.
abstract contract ERC3009 is ERC20, EIP712 {
    /// @notice keccak256 of the TransferWithAuthorization type.
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    /// @notice keccak256 of the ReceiveWithAuthorization type.
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    /// @notice keccak256 of the CancelAuthorization type.
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");

    mapping(address authorizer => mapping(bytes32 nonce => bool used)) private _authorizationStates;

    /// @notice An authorization was used (a transfer made with it).
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    /// @notice An authorization was cancelled before use.
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    /// @notice The authorization's `validAfter` is still in the future.
    error AuthorizationNotYetValid(uint256 validAfter);
    /// @notice The authorization's `validBefore` has passed.
    error AuthorizationExpired(uint256 validBefore);
    /// @notice This nonce of this authorizer was used or cancelled already.
    error AuthorizationAlreadyUsed(address authorizer, bytes32 nonce);
    /// @notice The signature is not the authorizer's over this authorization.
    error InvalidAuthorizationSignature();
    /// @notice receiveWithAuthorization must be called by its payee.
    error CallerNotPayee(address caller, address payee);

    /// @notice Whether `nonce` of `authorizer` was used or cancelled.
    /// @param authorizer The signer of the authorization.
    /// @param nonce The authorization's nonce.
    /// @return True once used or cancelled.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationStates[authorizer][nonce];
    }

    /// @notice Transfer `value` from `from` to `to` with `from`'s signed authorization.
    /// @param from The payer (the signer).
    /// @param to The payee.
    /// @param value Amount, in the smallest unit.
    /// @param validAfter Valid only after this unix time.
    /// @param validBefore Valid only before this unix time.
    /// @param nonce A unique 32-byte nonce chosen by the payer.
    /// @param v Signature v.
    /// @param r Signature r.
    /// @param s Signature s.
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
            from,
            to,
            value,
            validAfter,
            validBefore,
            nonce,
            abi.encodePacked(r, s, v)
        );
    }

    /// @notice As the (v, r, s) form, with the signature as bytes (EOA or ERC-1271).
    /// @param from The payer (the signer).
    /// @param to The payee.
    /// @param value Amount, in the smallest unit.
    /// @param validAfter Valid only after this unix time.
    /// @param validBefore Valid only before this unix time.
    /// @param nonce A unique 32-byte nonce chosen by the payer.
    /// @param signature The payer's signature.
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, signature
        );
    }

    /// @notice As transferWithAuthorization, but only the payee may submit it (so no one
    ///         can front-run a payee's contract call that expects the transfer inside it).
    /// @param from The payer (the signer).
    /// @param to The payee, which must be the caller.
    /// @param value Amount, in the smallest unit.
    /// @param validAfter Valid only after this unix time.
    /// @param validBefore Valid only before this unix time.
    /// @param nonce A unique 32-byte nonce chosen by the payer.
    /// @param v Signature v.
    /// @param r Signature r.
    /// @param s Signature s.
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        if (msg.sender != to) revert CallerNotPayee(msg.sender, to);
        _transferWithAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
            from,
            to,
            value,
            validAfter,
            validBefore,
            nonce,
            abi.encodePacked(r, s, v)
        );
    }

    /// @notice Cancel an unused authorization of `authorizer`.
    /// @param authorizer The signer of the authorization to cancel.
    /// @param nonce Its nonce.
    /// @param v Signature v (of CancelAuthorization).
    /// @param r Signature r.
    /// @param s Signature s.
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s)
        external
    {
        if (_authorizationStates[authorizer][nonce]) revert AuthorizationAlreadyUsed(authorizer, nonce);
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce)));
        if (!SignatureChecker.isValidSignatureNow(authorizer, digest, abi.encodePacked(r, s, v))) {
            revert InvalidAuthorizationSignature();
        }
        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    function _transferWithAuthorization(
        bytes32 typehash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) private {
        // slither-disable-next-line timestamp
        if (block.timestamp <= validAfter) revert AuthorizationNotYetValid(validAfter);
        // slither-disable-next-line timestamp
        if (block.timestamp >= validBefore) revert AuthorizationExpired(validBefore);
        if (_authorizationStates[from][nonce]) revert AuthorizationAlreadyUsed(from, nonce);
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(typehash, from, to, value, validAfter, validBefore, nonce))
        );
        if (!SignatureChecker.isValidSignatureNow(from, digest, signature)) {
            revert InvalidAuthorizationSignature();
        }
        _authorizationStates[from][nonce] = true;
        emit AuthorizationUsed(from, nonce);
        _transfer(from, to, value);
    }
}
