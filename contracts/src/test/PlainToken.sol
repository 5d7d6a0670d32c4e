// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title PlainToken (tests only)
/// @notice An ERC-20 with no permit (no EIP-2612, no ERC-5267), as many allowlisted
///         stablecoins are: buyers pay for it with approve + purchase.
contract PlainToken is ERC20 {
    constructor() ERC20("Plain", "PLN") {}

    /// @notice Anyone may mint (tests only).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
