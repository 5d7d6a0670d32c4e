// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IERC3009
/// @notice What the marketplace calls of an EIP-3009 token (USDC, MarketToken): a transfer
///         with the payer's signed authorization, and whether an authorization was used.
interface IERC3009 {
    /// @notice Transfers `value` from `from` to `to` with `from`'s signed authorization.
    /// @param from The payer (the signer).
    /// @param to The payee.
    /// @param value Amount, in the smallest unit.
    /// @param validAfter Valid only after this unix time.
    /// @param validBefore Valid only before this unix time.
    /// @param nonce A unique 32-byte nonce chosen by the payer.
    /// @param signature The signature (65 bytes, or an ERC-1271 wallet's).
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;

    /// @notice Whether `nonce` of `authorizer` was used or cancelled.
    /// @param authorizer The signer of the authorization.
    /// @param nonce The authorization's nonce.
    /// @return True once used or cancelled.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
}
