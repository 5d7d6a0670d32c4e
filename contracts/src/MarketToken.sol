// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC3009} from "./ERC3009.sol";

/// @title MarketToken
/// @notice An ERC-20 with EIP-2612 permit and EIP-3009 transfers with authorization (as
///         USDC has them, so x402's `exact` scheme can pay with it), for development and
///         tests.
/// @dev Production deployments list any allowlisted ERC-20 (a stablecoin, say);
///      this token exists so the embedded default and the tests have one to pay with.
contract MarketToken is ERC20, ERC20Permit, ERC3009, Ownable {
    /// @param initialOwner Receives `initialSupply` and the right to mint.
    /// @param initialSupply Amount minted to `initialOwner` at deployment.
    constructor(address initialOwner, uint256 initialSupply)
        ERC20("ModelMarket Token", "MMT")
        ERC20Permit("ModelMarket Token")
        Ownable(initialOwner)
    {
        _mint(initialOwner, initialSupply);
    }

    /// @notice The EIP-712 domain version, which x402 clients read to sign with.
    /// @return The version string ("1").
    function version() external view returns (string memory) {
        return _EIP712Version();
    }

    /// @notice Mints `amount` tokens to `to`. Only the owner.
    /// @param to Receives the new tokens.
    /// @param amount Amount to mint, in the token's smallest unit.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
