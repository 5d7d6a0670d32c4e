// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IModelMarketplace} from "./IModelMarketplace.sol";
import {IERC3009} from "./IERC3009.sol";

/// @title ModelMarketplace
/// @notice Sellers list ONNX models (by IPFS CID) at a price per inference call in an
///         allowlisted ERC-20; buyers purchase calls; the gateway credits them off-chain
///         from the `Purchased` event. Sellers withdraw their earnings (pull payments).
/// @dev The owner manages the token allowlist, the protocol fee (hard-capped at
///      `MAX_FEE_BPS`), the treasury and the pause switch. No function lets the owner
///      move a seller's earnings, and pausing never blocks withdrawals.
contract ModelMarketplace is IModelMarketplace, Ownable2Step, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @inheritdoc IModelMarketplace
    uint16 public constant MAX_FEE_BPS = 1_000;
    /// @inheritdoc IModelMarketplace
    uint256 public constant MAX_CALLS_PER_PURCHASE = 1e15;
    uint256 private constant BPS = 10_000;

    // Declared first so it packs into the slot that holds Pausable's flag: `purchase`
    // then reads the pause switch and the fee with one SLOAD.
    /// @inheritdoc IModelMarketplace
    uint16 public feeBps;

    /// @inheritdoc IModelMarketplace
    address public treasury;

    /// @inheritdoc IModelMarketplace
    uint256 public listingCount;

    mapping(uint256 modelId => Listing) private _listings;

    /// @inheritdoc IModelMarketplace
    mapping(address token => bool) public tokenAllowed;

    /// @inheritdoc IModelMarketplace
    mapping(address seller => mapping(address token => uint256)) public earnings;

    // Per token, one slot so a sale updates both with one write: the low 128 bits hold
    // the protocol's fees, the high 128 everything the contract owes (every seller's
    // earnings plus the fees; so fees <= owed). What the contract holds above `owed`
    // arrived unattributed (an authorization someone submitted straight to the token):
    // the only money `creditSubmittedAuthorization` can credit.
    mapping(address token => uint256) private _books;
    uint256 private constant LOW128 = type(uint128).max;

    /// @inheritdoc IModelMarketplace
    mapping(address account => bool) public settlers;

    // Only authorizations credited by `creditSubmittedAuthorization`: the ones settled
    // through `settlePerCall` are guarded by the token's own nonce, and a write per call
    // would cost every x402 call 22k gas.
    mapping(address token => mapping(address payer => mapping(bytes32 nonce => bool)))
        private _creditedAuthorizations;

    modifier onlySettler() {
        if (!settlers[msg.sender]) revert NotSettler(msg.sender);
        _;
    }

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

    /// @inheritdoc IModelMarketplace
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

    /// @inheritdoc IModelMarketplace
    function setPrice(uint256 modelId, uint256 newPrice) external {
        Listing storage listing = _sellerListing(modelId);
        uint96 price = _checkedPrice(newPrice);
        uint256 oldPrice = listing.pricePerCall;
        listing.pricePerCall = price;
        emit PriceChanged(modelId, oldPrice, newPrice);
    }

    /// @inheritdoc IModelMarketplace
    function delist(uint256 modelId) external {
        Listing storage listing = _sellerListing(modelId);
        if (!listing.active) revert ListingInactive(modelId);
        listing.active = false;
        emit ModelDelisted(modelId);
    }

    /// @inheritdoc IModelMarketplace
    function relist(uint256 modelId) external whenNotPaused {
        Listing storage listing = _sellerListing(modelId);
        if (listing.active) revert ListingActive(modelId);
        if (!tokenAllowed[listing.token]) revert TokenNotAllowed(listing.token);
        listing.active = true;
        emit ModelRelisted(modelId);
    }

    /// @inheritdoc IModelMarketplace
    function withdraw(address token) external nonReentrant {
        uint256 amount = earnings[msg.sender][token];
        if (amount == 0) revert NothingToWithdraw(msg.sender, token);
        earnings[msg.sender][token] = 0;
        _books[token] -= amount << 128; // amount <= owed: no underflow
        emit Withdrawn(msg.sender, token, amount);
        IERC20(token).safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------- buyers

    /// @inheritdoc IModelMarketplace
    function purchase(uint256 modelId, uint256 calls, uint256 maxPricePerCall)
        external
        nonReentrant
        whenNotPaused
        returns (uint256 amount)
    {
        return _purchase(modelId, calls, maxPricePerCall);
    }

    /// @inheritdoc IModelMarketplace
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

    // ----------------------------------------------------------------- settlers

    /// @inheritdoc IModelMarketplace
    function settlePerCall(
        uint256 modelId,
        address payer,
        uint256 amount,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external onlySettler nonReentrant whenNotPaused returns (uint256 fee) {
        address token;
        (token, fee) = _creditPerCall(modelId, payer, amount, nonce);
        IERC3009(token).transferWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
    }

    /// @inheritdoc IModelMarketplace
    function creditSubmittedAuthorization(
        uint256 modelId,
        address payer,
        uint256 amount,
        bytes32 nonce
    ) external onlySettler nonReentrant returns (uint256 fee) {
        address token = _listings[modelId].token;
        if (token == address(0)) revert UnknownModel(modelId);
        if (!IERC3009(token).authorizationState(payer, nonce)) {
            revert AuthorizationNotUsed(payer, nonce);
        }
        if (_creditedAuthorizations[token][payer][nonce]) revert AuthorizationCredited(payer, nonce);
        // only money that arrived and is nobody's yet: never a seller's earnings or a fee
        uint256 surplus = IERC20(token).balanceOf(address(this)) - (_books[token] >> 128);
        if (amount > surplus) revert NothingSubmitted(token, amount, surplus);
        _creditedAuthorizations[token][payer][nonce] = true;
        (, fee) = _creditPerCall(modelId, payer, amount, nonce);
    }

    // -------------------------------------------------------------------- owner

    /// @inheritdoc IModelMarketplace
    function setSettler(address settler, bool allowed) external onlyOwner {
        if (settler == address(0)) revert ZeroAddress();
        settlers[settler] = allowed;
        emit SettlerSet(settler, allowed);
    }

    /// @inheritdoc IModelMarketplace
    function setTokenAllowed(address token, bool allowed) external onlyOwner {
        if (token == address(0)) revert ZeroAddress();
        tokenAllowed[token] = allowed;
        emit TokenAllowed(token, allowed);
    }

    /// @inheritdoc IModelMarketplace
    function setFee(uint16 newFeeBps) external onlyOwner {
        _setFee(newFeeBps);
    }

    /// @inheritdoc IModelMarketplace
    function setTreasury(address newTreasury) external onlyOwner {
        _setTreasury(newTreasury);
    }

    /// @inheritdoc IModelMarketplace
    function withdrawFees(address token) external onlyOwner nonReentrant {
        uint256 book = _books[token];
        uint256 amount = book & LOW128;
        if (amount == 0) revert NothingToWithdraw(treasury, token);
        _books[token] = ((book >> 128) - amount) << 128; // fees to 0, owed less them
        emit FeesWithdrawn(treasury, token, amount);
        IERC20(token).safeTransfer(treasury, amount);
    }

    /// @inheritdoc IModelMarketplace
    function pause() external onlyOwner {
        _pause();
    }

    /// @inheritdoc IModelMarketplace
    function unpause() external onlyOwner {
        _unpause();
    }

    // --------------------------------------------------------------------- views

    /// @inheritdoc IModelMarketplace
    function protocolFees(address token) external view returns (uint256) {
        return _books[token] & LOW128;
    }

    /// @inheritdoc IModelMarketplace
    function owed(address token) external view returns (uint256) {
        return _books[token] >> 128;
    }

    /// @inheritdoc IModelMarketplace
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
        _book(token, amount, fee);
        emit Purchased(modelId, msg.sender, calls, amount, fee);

        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
    }

    function _creditPerCall(uint256 modelId, address payer, uint256 amount, bytes32 nonce)
        private
        returns (address token, uint256 fee)
    {
        Listing storage listing = _listings[modelId];
        address seller = listing.seller;
        if (seller == address(0)) revert UnknownModel(modelId);
        token = listing.token;
        fee = (amount * feeBps) / BPS;
        earnings[seller][token] += amount - fee;
        _book(token, amount, fee);
        emit PaidPerCall(modelId, payer, amount, fee, nonce);
    }

    function _book(address token, uint256 amount, uint256 fee) private {
        uint256 book = _books[token];
        // Unchecked: owed < 2^128, and amount is calls * a uint96 price (< 2^146) or an
        // amount of tokens that actually moves here (a balance, far below 2^255), so the
        // sum cannot wrap; it is checked against 128 bits, and fees + fee <= the sum.
        unchecked {
            uint256 newOwed = (book >> 128) + amount;
            // no sale the chain accepts is one the book cannot hold
            if (newOwed > LOW128) revert BookOverflow(token, newOwed);
            _books[token] = (newOwed << 128) | ((book & LOW128) + fee);
        }
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
