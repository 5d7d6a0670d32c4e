// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title ModelMarketplace
/// @notice Sellers list ONNX models (by IPFS CID) at a price per inference call in an
///         allowlisted ERC-20; buyers purchase calls; the gateway credits them off-chain
///         from the `Purchased` event. Sellers withdraw their earnings (pull payments).
/// @dev The owner manages the token allowlist, the protocol fee (hard-capped at
///      `MAX_FEE_BPS`), the treasury and the pause switch. No function lets the owner
///      move a seller's earnings, and pausing never blocks withdrawals.
contract ModelMarketplace is Ownable2Step, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The highest protocol fee the owner can ever set, in basis points (10%).
    uint16 public constant MAX_FEE_BPS = 1_000;
    /// @notice The most calls one purchase may buy (10**15). The off-chain ledger credits
    ///         at most this many per `Purchased` event, so every purchase the chain
    ///         accepts is one the gateway credits in full.
    uint256 public constant MAX_CALLS_PER_PURCHASE = 1e15;
    uint256 private constant BPS = 10_000;

    // Declared first so it packs into the slot that holds Pausable's flag: `purchase`
    // then reads the pause switch and the fee with one SLOAD.
    /// @notice The protocol fee taken from each purchase, in basis points.
    uint16 public feeBps;

    /// @notice Where `withdrawFees` sends the protocol's fees.
    address public treasury;

    /// @notice One model on sale. Two packed slots hold everything `purchase` reads.
    struct Listing {
        address seller;
        bool active;
        address token;
        uint96 pricePerCall;
        string modelCid;
        string metadataCid;
    }

    /// @notice Number of listings ever made; model ids run from 1 to `listingCount`.
    uint256 public listingCount;

    mapping(uint256 modelId => Listing) private _listings;

    /// @notice Tokens a model may be listed in.
    mapping(address token => bool) public tokenAllowed;

    /// @notice What each seller can withdraw, per token.
    mapping(address seller => mapping(address token => uint256)) public earnings;

    /// @notice Protocol fees collected and not yet sent to the treasury, per token.
    mapping(address token => uint256) public protocolFees;

    /// @notice A model was listed.
    event ModelListed(
        uint256 indexed modelId,
        address indexed seller,
        address indexed token,
        string modelCid,
        string metadataCid,
        uint256 pricePerCall
    );
    /// @notice A listing's price changed.
    event PriceChanged(uint256 indexed modelId, uint256 oldPrice, uint256 newPrice);
    /// @notice A listing stopped selling.
    event ModelDelisted(uint256 indexed modelId);
    /// @notice A delisted listing sells again.
    event ModelRelisted(uint256 indexed modelId);
    /// @notice `buyer` paid `amount` (of which `fee` went to the protocol) for `calls` calls.
    event Purchased(
        uint256 indexed modelId, address indexed buyer, uint256 calls, uint256 amount, uint256 fee
    );
    /// @notice A seller withdrew earnings.
    event Withdrawn(address indexed seller, address indexed token, uint256 amount);
    /// @notice Protocol fees were sent to the treasury.
    event FeesWithdrawn(address indexed treasury, address indexed token, uint256 amount);
    /// @notice A token was added to or removed from the allowlist.
    event TokenAllowed(address indexed token, bool allowed);
    /// @notice The protocol fee changed.
    event FeeChanged(uint256 oldFeeBps, uint256 newFeeBps);
    /// @notice The treasury changed.
    event TreasuryChanged(address indexed oldTreasury, address indexed newTreasury);

    /// @notice No listing has this id.
    error UnknownModel(uint256 modelId);
    /// @notice Only the listing's seller may do this.
    error NotSeller(uint256 modelId, address caller, address seller);
    /// @notice The listing is delisted.
    error ListingInactive(uint256 modelId);
    /// @notice The listing is already on sale.
    error ListingActive(uint256 modelId);
    /// @notice The token is not on the allowlist.
    error TokenNotAllowed(address token);
    /// @notice The listing's price is above what the buyer agreed to pay per call.
    error PriceAboveMax(uint256 price, uint256 maxPricePerCall);
    /// @notice A price must be above zero and fit in 96 bits.
    error InvalidPrice(uint256 price);
    /// @notice A purchase must be for at least one call.
    error ZeroCalls();
    /// @notice A purchase may buy at most `max` (`MAX_CALLS_PER_PURCHASE`) calls.
    error TooManyCalls(uint256 calls, uint256 max);
    /// @notice A CID must not be empty.
    error EmptyCid();
    /// @notice The fee asked for is above the hard cap.
    error FeeAboveCap(uint256 feeBps, uint256 cap);
    /// @notice The zero address is not allowed here.
    error ZeroAddress();
    /// @notice There is nothing to withdraw.
    error NothingToWithdraw(address account, address token);

    /// @param initialOwner The owner (two-step transferable).
    /// @param initialTreasury Receives protocol fees.
    /// @param initialFeeBps The protocol fee in basis points, at most `MAX_FEE_BPS`.
    constructor(address initialOwner, address initialTreasury, uint16 initialFeeBps)
        Ownable(initialOwner)
    {
        _setTreasury(initialTreasury);
        _setFee(initialFeeBps);
    }

    // ------------------------------------------------------------------ sellers

    /// @notice Lists a model for sale.
    /// @param modelCid CID of the ONNX file.
    /// @param metadataCid CID of the model card (JSON).
    /// @param token The allowlisted ERC-20 the model is priced in.
    /// @param pricePerCall Price of one inference call, in the token's smallest unit.
    /// @return modelId The new listing's id.
    function listModel(
        string calldata modelCid,
        string calldata metadataCid,
        address token,
        uint256 pricePerCall
    ) external whenNotPaused returns (uint256 modelId) {
        if (bytes(modelCid).length == 0 || bytes(metadataCid).length == 0) revert EmptyCid();
        if (!tokenAllowed[token]) revert TokenNotAllowed(token);
        uint96 price = _checkedPrice(pricePerCall);

        modelId = ++listingCount;
        _listings[modelId] = Listing({
            seller: msg.sender,
            active: true,
            token: token,
            pricePerCall: price,
            modelCid: modelCid,
            metadataCid: metadataCid
        });
        emit ModelListed(modelId, msg.sender, token, modelCid, metadataCid, pricePerCall);
    }

    /// @notice Changes a listing's price. Only its seller.
    function setPrice(uint256 modelId, uint256 newPrice) external {
        Listing storage listing = _sellerListing(modelId);
        uint96 price = _checkedPrice(newPrice);
        uint256 oldPrice = listing.pricePerCall;
        listing.pricePerCall = price;
        emit PriceChanged(modelId, oldPrice, newPrice);
    }

    /// @notice Stops a listing from selling. Only its seller. Credits already bought stay valid.
    function delist(uint256 modelId) external {
        Listing storage listing = _sellerListing(modelId);
        if (!listing.active) revert ListingInactive(modelId);
        listing.active = false;
        emit ModelDelisted(modelId);
    }

    /// @notice Puts a delisted listing back on sale. Only its seller; its token must
    ///         still be allowlisted.
    function relist(uint256 modelId) external whenNotPaused {
        Listing storage listing = _sellerListing(modelId);
        if (listing.active) revert ListingActive(modelId);
        if (!tokenAllowed[listing.token]) revert TokenNotAllowed(listing.token);
        listing.active = true;
        emit ModelRelisted(modelId);
    }

    /// @notice Sends the caller all their earnings in `token`. Works while paused.
    function withdraw(address token) external nonReentrant {
        uint256 amount = earnings[msg.sender][token];
        if (amount == 0) revert NothingToWithdraw(msg.sender, token);
        earnings[msg.sender][token] = 0;
        emit Withdrawn(msg.sender, token, amount);
        IERC20(token).safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------- buyers

    /// @notice Buys `calls` inference calls of `modelId`, paying `calls * pricePerCall`.
    ///         The caller must have approved this contract for that amount.
    /// @param calls From 1 to `MAX_CALLS_PER_PURCHASE`; reverts with `ZeroCalls` or
    ///        `TooManyCalls` outside that range.
    /// @param maxPricePerCall Reverts if the price is above this (a seller cannot raise
    ///        the price under a pending purchase).
    /// @return amount What was paid in total, fee included.
    function purchase(uint256 modelId, uint256 calls, uint256 maxPricePerCall)
        external
        nonReentrant
        whenNotPaused
        returns (uint256 amount)
    {
        return _purchase(modelId, calls, maxPricePerCall);
    }

    /// @notice `purchase` with an EIP-2612 permit instead of a prior `approve`. The same
    ///         checks apply, `calls` from 1 to `MAX_CALLS_PER_PURCHASE` included.
    /// @dev A failed permit is ignored when the allowance is already in place, so a
    ///      front-run permit cannot grief the purchase.
    function purchaseWithPermit(
        uint256 modelId,
        uint256 calls,
        uint256 maxPricePerCall,
        uint256 value,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant whenNotPaused returns (uint256 amount) {
        Listing storage listing = _listings[modelId];
        address token = listing.token;
        if (token == address(0)) revert UnknownModel(modelId);
        try IERC20Permit(token).permit(msg.sender, address(this), value, deadline, v, r, s) {}
        catch {}
        return _purchase(modelId, calls, maxPricePerCall);
    }

    // -------------------------------------------------------------------- owner

    /// @notice Adds `token` to or removes it from the allowlist. Removal stops new
    ///         listings and relists in it; existing listings keep selling until their
    ///         seller delists them, and earnings in it stay withdrawable.
    function setTokenAllowed(address token, bool allowed) external onlyOwner {
        if (token == address(0)) revert ZeroAddress();
        tokenAllowed[token] = allowed;
        emit TokenAllowed(token, allowed);
    }

    /// @notice Sets the protocol fee, at most `MAX_FEE_BPS`.
    function setFee(uint16 newFeeBps) external onlyOwner {
        _setFee(newFeeBps);
    }

    /// @notice Sets where protocol fees go.
    function setTreasury(address newTreasury) external onlyOwner {
        _setTreasury(newTreasury);
    }

    /// @notice Sends the protocol fees collected in `token` to the treasury.
    function withdrawFees(address token) external onlyOwner nonReentrant {
        uint256 amount = protocolFees[token];
        if (amount == 0) revert NothingToWithdraw(treasury, token);
        protocolFees[token] = 0;
        emit FeesWithdrawn(treasury, token, amount);
        IERC20(token).safeTransfer(treasury, amount);
    }

    /// @notice Stops listing, relisting and purchases. Withdrawals keep working.
    function pause() external onlyOwner {
        _pause();
    }

    /// @notice Undoes `pause`.
    function unpause() external onlyOwner {
        _unpause();
    }

    // --------------------------------------------------------------------- views

    /// @notice The listing `modelId`; reverts for an unknown id.
    function getListing(uint256 modelId) external view returns (Listing memory) {
        Listing memory listing = _listings[modelId];
        if (listing.seller == address(0)) revert UnknownModel(modelId);
        return listing;
    }

    // ------------------------------------------------------------------ internal

    function _purchase(uint256 modelId, uint256 calls, uint256 maxPricePerCall)
        private
        returns (uint256 amount)
    {
        Listing storage listing = _listings[modelId];
        address seller = listing.seller;
        if (seller == address(0)) revert UnknownModel(modelId);
        if (!listing.active) revert ListingInactive(modelId);
        if (calls == 0) revert ZeroCalls();
        if (calls > MAX_CALLS_PER_PURCHASE) revert TooManyCalls(calls, MAX_CALLS_PER_PURCHASE);
        address token = listing.token;
        uint256 price = listing.pricePerCall;
        if (price > maxPricePerCall) revert PriceAboveMax(price, maxPricePerCall);

        amount = calls * price;
        uint256 fee = (amount * feeBps) / BPS;
        earnings[seller][token] += amount - fee;
        if (fee != 0) protocolFees[token] += fee;
        emit Purchased(modelId, msg.sender, calls, amount, fee);

        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
    }

    function _sellerListing(uint256 modelId) private view returns (Listing storage listing) {
        listing = _listings[modelId];
        address seller = listing.seller;
        if (seller == address(0)) revert UnknownModel(modelId);
        if (seller != msg.sender) revert NotSeller(modelId, msg.sender, seller);
    }

    function _checkedPrice(uint256 price) private pure returns (uint96) {
        if (price == 0 || price > type(uint96).max) revert InvalidPrice(price);
        return uint96(price);
    }

    function _setFee(uint16 newFeeBps) private {
        if (newFeeBps > MAX_FEE_BPS) revert FeeAboveCap(newFeeBps, MAX_FEE_BPS);
        emit FeeChanged(feeBps, newFeeBps);
        feeBps = newFeeBps;
    }

    function _setTreasury(address newTreasury) private {
        if (newTreasury == address(0)) revert ZeroAddress();
        emit TreasuryChanged(treasury, newTreasury);
        treasury = newTreasury;
    }
}
