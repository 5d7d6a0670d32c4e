// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IModelMarketplace} from "../IModelMarketplace.sol";

/// @title BulkBuyer (benchmarks and tests only)
/// @notice Makes many purchases in one transaction, so a benchmark can put thousands of
///         `Purchased` events on a chain quickly.
contract BulkBuyer {
    /// @notice Approve `market` to pull this contract's `token`, then buy `count` times.
    function buyMany(
        address market,
        address token,
        uint256 modelId,
        uint256 count,
        uint256 price
    ) external {
        IERC20(token).approve(market, type(uint256).max);
        for (uint256 i = 0; i < count; i++) {
            IModelMarketplace(market).purchase(modelId, 1 + (i % 5), price);
        }
    }
}
