// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IModelMarketplace
/// @notice The API of `ModelMarketplace`: sellers list ONNX models (by IPFS CID) at a price
///         per inference call in an allowlisted ERC-20, buyers purchase calls (or pay one
///         call at a time with an EIP-3009 authorization that a settler submits: x402),
///         sellers withdraw their earnings, and the owner manages the allowlist, the
///         protocol fee, the treasury, the settlers and the pause switch.
/// @dev The ownership (`Ownable2Step`) and pause-state (`Pausable`) functions, events and
///      errors the marketplace inherits from OpenZeppelin are declared there, not here.
interface IModelMarketplace {
    /// @notice One model on sale. Two packed slots hold everything `purchase` reads.
    /// @param seller Who listed the model and receives its earnings.
    /// @param active Whether the listing sells (false once delisted).
    /// @param token The ERC-20 the model is priced in.
    /// @param pricePerCall Price of one inference call, in the token's smallest unit.
    /// @param modelCid CID of the ONNX file.
    /// @param metadataCid CID of the model card (JSON).
    struct Listing {
        address seller;
        bool active;
        address token;
        uint96 pricePerCall;
        string modelCid;
        string metadataCid;
    }

    // ------------------------------------------------------------------- events

    /// @notice A model was listed.
    /// @param modelId The new listing's id.
    /// @param seller Who listed it.
    /// @param token The ERC-20 it is priced in.
    /// @param modelCid CID of the ONNX file.
    /// @param metadataCid CID of the model card (JSON).
    /// @param pricePerCall Price of one inference call, in the token's smallest unit.
    event ModelListed(
        uint256 indexed modelId,
        address indexed seller,
        address indexed token,
        string modelCid,
        string metadataCid,
        uint256 pricePerCall
    );

    /// @notice A listing's price changed.
    /// @param modelId The listing.
    /// @param oldPrice The price per call before.
    /// @param newPrice The price per call from now on.
    event PriceChanged(uint256 indexed modelId, uint256 oldPrice, uint256 newPrice);

    /// @notice A listing stopped selling.
    /// @param modelId The listing.
    event ModelDelisted(uint256 indexed modelId);

    /// @notice A delisted listing sells again.
    /// @param modelId The listing.
    event ModelRelisted(uint256 indexed modelId);

    /// @notice `buyer` paid `amount` (of which `fee` went to the protocol) for `calls` calls.
    /// @param modelId The listing bought from.
    /// @param buyer Who paid, and whom the gateway credits.
    /// @param calls Number of inference calls bought.
    /// @param amount What was paid in total, fee included.
    /// @param fee The protocol's part of `amount`.
    event Purchased(
        uint256 indexed modelId, address indexed buyer, uint256 calls, uint256 amount, uint256 fee
    );

    /// @notice `payer` paid `amount` (of which `fee` went to the protocol) for one call of
    ///         `modelId`, already served, with the EIP-3009 authorization `nonce`.
    /// @param modelId The listing the call was served from.
    /// @param payer Who signed the authorization.
    /// @param amount What was paid, fee included.
    /// @param fee The protocol's part of `amount`.
    /// @param nonce The authorization's nonce (unique per payer).
    event PaidPerCall(
        uint256 indexed modelId, address indexed payer, uint256 amount, uint256 fee, bytes32 nonce
    );

    /// @notice `settler` may (or may no longer) settle per-call payments.
    /// @param settler The gateway's settling account.
    /// @param allowed Whether it may settle from now on.
    event SettlerSet(address indexed settler, bool allowed);

    /// @notice A seller withdrew earnings.
    /// @param seller Who withdrew.
    /// @param token The ERC-20 withdrawn.
    /// @param amount How much was sent.
    event Withdrawn(address indexed seller, address indexed token, uint256 amount);

    /// @notice Protocol fees were sent to the treasury.
    /// @param treasury Where they went.
    /// @param token The ERC-20 sent.
    /// @param amount How much was sent.
    event FeesWithdrawn(address indexed treasury, address indexed token, uint256 amount);

    /// @notice A token was added to or removed from the allowlist.
    /// @param token The ERC-20.
    /// @param allowed Whether it is allowlisted from now on.
    event TokenAllowed(address indexed token, bool allowed);

    /// @notice The protocol fee changed.
    /// @param oldFeeBps The fee before, in basis points.
    /// @param newFeeBps The fee from now on, in basis points.
    event FeeChanged(uint256 oldFeeBps, uint256 newFeeBps);

    /// @notice The treasury changed.
    /// @param oldTreasury The treasury before (the zero address at deployment).
    /// @param newTreasury The treasury from now on.
    event TreasuryChanged(address indexed oldTreasury, address indexed newTreasury);

    // ------------------------------------------------------------------- errors

    /// @notice No listing has this id.
    /// @param modelId The id asked for.
    error UnknownModel(uint256 modelId);

    /// @notice Only the listing's seller may do this.
    /// @param modelId The listing.
    /// @param caller Who tried.
    /// @param seller The listing's seller.
    error NotSeller(uint256 modelId, address caller, address seller);

    /// @notice The listing is delisted.
    /// @param modelId The listing.
    error ListingInactive(uint256 modelId);

    /// @notice The listing is already on sale.
    /// @param modelId The listing.
    error ListingActive(uint256 modelId);

    /// @notice The token is not on the allowlist.
    /// @param token The ERC-20.
    error TokenNotAllowed(address token);

    /// @notice The listing's price is above what the buyer agreed to pay per call.
    /// @param price The listing's price per call.
    /// @param maxPricePerCall The most the buyer agreed to pay per call.
    error PriceAboveMax(uint256 price, uint256 maxPricePerCall);

    /// @notice A price must be above zero and fit in 96 bits.
    /// @param price The price refused.
    error InvalidPrice(uint256 price);

    /// @notice A purchase must be for at least one call.
    error ZeroCalls();

    /// @notice A purchase may buy at most `max` (`MAX_CALLS_PER_PURCHASE`) calls.
    /// @param calls The number of calls asked for.
    /// @param max `MAX_CALLS_PER_PURCHASE`.
    error TooManyCalls(uint256 calls, uint256 max);

    /// @notice A CID must not be empty.
    error EmptyCid();

    /// @notice The fee asked for is above the hard cap.
    /// @param feeBps The fee asked for, in basis points.
    /// @param cap `MAX_FEE_BPS`.
    error FeeAboveCap(uint256 feeBps, uint256 cap);

    /// @notice The zero address is not allowed here.
    error ZeroAddress();

    /// @notice There is nothing to withdraw.
    /// @notice Only an allowlisted settler may settle per-call payments.
    /// @param caller Who called.
    error NotSettler(address caller);

    /// @notice The authorization was not used at the token, so nothing arrived to credit.
    /// @param payer The authorizer.
    /// @param nonce The authorization's nonce.
    error AuthorizationNotUsed(address payer, bytes32 nonce);

    /// @notice A sale would take what the contract owes in `token` past 2^128 - 1 (its
    ///         book's width): refused, so no sale the chain accepts overflows it.
    /// @param token The ERC-20.
    /// @param owed What it would owe.
    error BookOverflow(address token, uint256 owed);

    /// @notice The contract holds less unattributed money than the amount to credit.
    /// @param token The ERC-20.
    /// @param amount What was to be credited.
    /// @param surplus What the contract holds above what it owes.
    error NothingSubmitted(address token, uint256 amount, uint256 surplus);

    /// @notice This authorization was credited already.
    /// @param payer The authorizer.
    /// @param nonce The authorization's nonce.
    error AuthorizationCredited(address payer, bytes32 nonce);

    /// @param account Whose balance is empty (the seller, or the treasury for fees).
    /// @param token The ERC-20.
    error NothingToWithdraw(address account, address token);

    // ------------------------------------------------------------------ sellers

    /// @notice Lists a model for sale. Reverts while paused.
    /// @dev Reverts with `EmptyCid`, `TokenNotAllowed` or `InvalidPrice`. Emits `ModelListed`.
    /// @param modelCid CID of the ONNX file.
    /// @param metadataCid CID of the model card (JSON).
    /// @param token The allowlisted ERC-20 the model is priced in.
    /// @param pricePerCall Price of one inference call, in the token's smallest unit; above
    ///        zero and at most `type(uint96).max`.
    /// @return modelId The new listing's id.
    function listModel(
        string calldata modelCid,
        string calldata metadataCid,
        address token,
        uint256 pricePerCall
    ) external returns (uint256 modelId);

    /// @notice Changes a listing's price. Only its seller.
    /// @dev Reverts with `UnknownModel`, `NotSeller` or `InvalidPrice`. Emits `PriceChanged`.
    /// @param modelId The listing.
    /// @param newPrice The new price per call; above zero and at most `type(uint96).max`.
    function setPrice(uint256 modelId, uint256 newPrice) external;

    /// @notice Stops a listing from selling. Only its seller. Credits already bought stay valid.
    /// @dev Reverts with `UnknownModel`, `NotSeller` or `ListingInactive`. Emits `ModelDelisted`.
    /// @param modelId The listing.
    function delist(uint256 modelId) external;

    /// @notice Puts a delisted listing back on sale. Only its seller; its token must
    ///         still be allowlisted. Reverts while paused.
    /// @dev Reverts with `UnknownModel`, `NotSeller`, `ListingActive` or `TokenNotAllowed`.
    ///      Emits `ModelRelisted`.
    /// @param modelId The listing.
    function relist(uint256 modelId) external;

    /// @notice Sends the caller all their earnings in `token`. Works while paused.
    /// @dev Reverts with `NothingToWithdraw`. Emits `Withdrawn`.
    /// @param token The ERC-20 to withdraw.
    function withdraw(address token) external;

    // ------------------------------------------------------------------- buyers

    /// @notice Buys `calls` inference calls of `modelId`, paying `calls * pricePerCall`.
    ///         The caller must have approved this contract for that amount. Reverts while
    ///         paused.
    /// @dev Reverts with `UnknownModel`, `ListingInactive`, `ZeroCalls`, `TooManyCalls` or
    ///      `PriceAboveMax`. Emits `Purchased`.
    /// @param modelId The listing to buy from.
    /// @param calls From 1 to `MAX_CALLS_PER_PURCHASE`; reverts with `ZeroCalls` or
    ///        `TooManyCalls` outside that range.
    /// @param maxPricePerCall Reverts if the price is above this (a seller cannot raise
    ///        the price under a pending purchase).
    /// @return amount What was paid in total, fee included.
    function purchase(uint256 modelId, uint256 calls, uint256 maxPricePerCall)
        external
        returns (uint256 amount);

    /// @notice `purchase` with an EIP-2612 permit instead of a prior `approve`. The same
    ///         checks apply, `calls` from 1 to `MAX_CALLS_PER_PURCHASE` included.
    /// @param modelId The listing to buy from.
    /// @param calls From 1 to `MAX_CALLS_PER_PURCHASE`.
    /// @param maxPricePerCall Reverts if the price is above this.
    /// @param value The allowance the permit grants this contract (at least the total price).
    /// @param deadline The permit's deadline (a unix timestamp).
    /// @param v The permit signature's `v`.
    /// @param r The permit signature's `r`.
    /// @param s The permit signature's `s`.
    /// @return amount What was paid in total, fee included.
    function purchaseWithPermit(
        uint256 modelId,
        uint256 calls,
        uint256 maxPricePerCall,
        uint256 value,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external returns (uint256 amount);

    /// @notice Settles one served call paid with `payer`'s EIP-3009 authorization to this
    ///         contract (x402's `exact` scheme): moves `amount` from `payer` here with the
    ///         token's `transferWithAuthorization` and credits the seller, less the fee.
    ///         Only a settler (the gateway, which checked the amount against the price
    ///         before serving). Reverts while paused.
    /// @dev Reverts with `NotSettler`, `UnknownModel`, or the token's own error (a used
    ///      nonce, an expired window, a bad signature, a short balance). Emits `PaidPerCall`.
    /// @param modelId The listing the call was served from.
    /// @param payer The authorizer.
    /// @param amount The authorized value.
    /// @param validAfter The authorization's start (unix time).
    /// @param validBefore The authorization's end (unix time).
    /// @param nonce The authorization's nonce.
    /// @param signature The authorization's signature (65 bytes, or ERC-1271 for wallets).
    /// @return fee The protocol's part of `amount`.
    function settlePerCall(
        uint256 modelId,
        address payer,
        uint256 amount,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external returns (uint256 fee);

    /// @notice Credits a served call whose authorization (to this contract) someone else
    ///         submitted straight to the token first: the tokens arrived but no seller was
    ///         credited. Only a settler, which must have checked in the token's logs that
    ///         the transfer came here and did not come through `settlePerCall`; each
    ///         authorization is credited this way at most once, and never more than the
    ///         contract holds above what it owes (no seller's earnings can be credited
    ///         twice, whatever the settler does).
    /// @dev Reverts with `NotSettler`, `UnknownModel`, `AuthorizationNotUsed`,
    ///      `AuthorizationCredited` or `NothingSubmitted`. Emits `PaidPerCall`.
    /// @param modelId The listing the call was served from.
    /// @param payer The authorizer.
    /// @param amount The authorized value.
    /// @param nonce The authorization's nonce.
    /// @return fee The protocol's part of `amount`.
    function creditSubmittedAuthorization(
        uint256 modelId,
        address payer,
        uint256 amount,
        bytes32 nonce
    ) external returns (uint256 fee);

    // -------------------------------------------------------------------- owner

    /// @notice Allows `settler` to settle per-call payments, or stops it. Only the owner.
    /// @dev Reverts with `ZeroAddress`. Emits `SettlerSet`.
    /// @param settler The gateway's settling account.
    /// @param allowed Whether it may settle from now on.
    function setSettler(address settler, bool allowed) external;

    /// @notice Adds `token` to or removes it from the allowlist. Only the owner. Removal
    ///         stops new listings and relists in it; existing listings keep selling until
    ///         their seller delists them, and earnings in it stay withdrawable.
    /// @dev Reverts with `ZeroAddress`. Emits `TokenAllowed`.
    /// @param token The ERC-20.
    /// @param allowed Whether it is allowlisted from now on.
    function setTokenAllowed(address token, bool allowed) external;

    /// @notice Sets the protocol fee, at most `MAX_FEE_BPS`. Only the owner.
    /// @dev Reverts with `FeeAboveCap`. Emits `FeeChanged`.
    /// @param newFeeBps The fee, in basis points.
    function setFee(uint16 newFeeBps) external;

    /// @notice Sets where protocol fees go. Only the owner.
    /// @dev Reverts with `ZeroAddress`. Emits `TreasuryChanged`.
    /// @param newTreasury The new treasury.
    function setTreasury(address newTreasury) external;

    /// @notice Sends the protocol fees collected in `token` to the treasury. Only the owner.
    /// @dev Reverts with `NothingToWithdraw`. Emits `FeesWithdrawn`.
    /// @param token The ERC-20.
    function withdrawFees(address token) external;

    /// @notice Stops listing, relisting and purchases. Withdrawals keep working. Only the owner.
    function pause() external;

    /// @notice Undoes `pause`. Only the owner.
    function unpause() external;

    // -------------------------------------------------------------------- views

    /// @notice The highest protocol fee the owner can ever set, in basis points.
    /// @return The cap (1000, that is 10%).
    function MAX_FEE_BPS() external view returns (uint16);

    /// @notice The most calls one purchase may buy. The off-chain ledger credits at most
    ///         this many per `Purchased` event, so every purchase the chain accepts is one
    ///         the gateway credits in full.
    /// @return The cap (10**15).
    function MAX_CALLS_PER_PURCHASE() external view returns (uint256);

    /// @notice The protocol fee taken from each purchase.
    /// @return The fee, in basis points.
    function feeBps() external view returns (uint16);

    /// @notice Where `withdrawFees` sends the protocol's fees.
    /// @return The treasury's address.
    function treasury() external view returns (address);

    /// @notice Number of listings ever made; model ids run from 1 to `listingCount`.
    /// @return The number of listings.
    function listingCount() external view returns (uint256);

    /// @notice Whether a model may be listed in `token`.
    /// @param token The ERC-20.
    /// @return Whether it is on the allowlist.
    function tokenAllowed(address token) external view returns (bool);

    /// @notice What `seller` can withdraw in `token`.
    /// @param seller The seller.
    /// @param token The ERC-20.
    /// @return The withdrawable amount.
    function earnings(address seller, address token) external view returns (uint256);

    /// @notice Protocol fees collected in `token` and not yet sent to the treasury.
    /// @param token The ERC-20.
    /// @return The amount `withdrawFees` would send.
    function protocolFees(address token) external view returns (uint256);

    /// @notice Everything the contract owes in `token`: every seller's earnings plus the
    ///         protocol's fees. It holds at least this much.
    /// @param token The ERC-20.
    /// @return The amount owed.
    function owed(address token) external view returns (uint256);

    /// @notice Whether `account` may settle per-call payments.
    /// @param account The account.
    /// @return Whether it is a settler.
    function settlers(address account) external view returns (bool);

    /// @notice The listing `modelId`.
    /// @dev Reverts with `UnknownModel` for an id no listing has.
    /// @param modelId The listing.
    /// @return The listing, delisted or not.
    function getListing(uint256 modelId) external view returns (Listing memory);
}
