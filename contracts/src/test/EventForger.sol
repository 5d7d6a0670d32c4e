// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

interface IListing {
    function listModel(
        string calldata modelCid,
        string calldata metadataCid,
        address token,
        uint256 pricePerCall
    ) external returns (uint256);
}

/// @title EventForger (tests only: the counterfeit-event attack)
/// @notice Emits logs shaped exactly like the marketplace's own (same topic0, same
///         indexed fields, same data) from another address, inside a transaction that
///         really calls the marketplace. A gateway or indexer that reads such a log as
///         the marketplace's would credit free calls or show a listing that is not.
contract EventForger {
    event Purchased(
        uint256 indexed modelId, address indexed buyer, uint256 calls, uint256 amount, uint256 fee
    );
    event ModelListed(
        uint256 indexed modelId,
        address indexed seller,
        address indexed token,
        string modelCid,
        string metadataCid,
        uint256 pricePerCall
    );

    /// @notice List a real (cheap) model on `market`, and around that call emit a forged
    ///         `Purchased` of `calls` calls of `modelId` for `buyer`, and a forged listing.
    function forge(
        address market,
        address token,
        uint256 modelId,
        address buyer,
        uint256 calls,
        uint256 price
    ) external {
        emit Purchased(modelId, buyer, calls, calls * price, 0);
        IListing(market).listModel("bafkforged", "bafkforgedcard", token, price);
        emit Purchased(modelId, buyer, calls, calls * price, 0);
        emit ModelListed(modelId + 1000, buyer, token, "bafkfake", "bafkfakecard", 1);
    }
}
