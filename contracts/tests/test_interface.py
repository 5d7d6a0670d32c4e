"""IModelMarketplace and ModelMarketplace have not drifted apart."""

from brownie import interface
from conftest import FEE_BPS, MAX_CALLS, META_CID, MODEL_CID, PRICE

# What ModelMarketplace has from its OpenZeppelin bases (Ownable2Step, Pausable,
# ReentrancyGuardTransient, SafeERC20) and so not from IModelMarketplace.
INHERITED = {
    ("function", "owner"),
    ("function", "pendingOwner"),
    ("function", "transferOwnership"),
    ("function", "acceptOwnership"),
    ("function", "renounceOwnership"),
    ("function", "paused"),
    ("event", "OwnershipTransferStarted"),
    ("event", "OwnershipTransferred"),
    ("event", "Paused"),
    ("event", "Unpaused"),
    ("error", "OwnableUnauthorizedAccount"),
    ("error", "OwnableInvalidOwner"),
    ("error", "EnforcedPause"),
    ("error", "ExpectedPause"),
    ("error", "ReentrancyGuardReentrantCall"),
    ("error", "SafeERC20FailedOperation"),
}


def _type(param):
    """The canonical ABI type of a parameter, tuples spelled out."""
    if param["type"].startswith("tuple"):
        inner = ",".join(_type(c) for c in param["components"])
        return f"({inner}){param['type'].removeprefix('tuple')}"
    return param["type"]


def _entries(abi):
    """(kind, signature) -> the entry's outputs, mutability and indexed flags."""
    out = {}
    for e in abi:
        if e["type"] not in ("function", "event", "error"):
            continue
        sig = f"{e['name']}({','.join(_type(p) for p in e['inputs'])})"
        out[(e["type"], sig)] = (
            tuple(_type(p) for p in e.get("outputs", [])),
            e.get("stateMutability"),
            tuple(bool(p.get("indexed")) for p in e["inputs"]),
        )
    return out


def test_interface_declares_the_contracts_own_api(ModelMarketplace):
    declared = _entries(interface.IModelMarketplace.abi)
    implemented = _entries(ModelMarketplace.abi)
    # Everything the interface declares is in the contract, with the same outputs,
    # mutability and indexed topics...
    for key, shape in declared.items():
        assert implemented.get(key) == shape, key
    # ...and everything the contract has is in the interface, bar what OpenZeppelin gives.
    extra = {(kind, sig.split("(")[0]) for kind, sig in implemented.keys() - declared.keys()}
    assert extra == INHERITED
    # Function selectors, as brownie computes them, agree too.
    inherited_fns = {name for kind, name in INHERITED if kind == "function"}
    own = {s: n for s, n in ModelMarketplace.selectors.items() if n not in inherited_fns}
    assert own == interface.IModelMarketplace.selectors


def test_deployed_marketplace_works_through_the_interface(market, token, seller, buyer, owner):
    im = interface.IModelMarketplace(market.address)
    assert im.MAX_FEE_BPS() == 1000
    assert im.MAX_CALLS_PER_PURCHASE() == MAX_CALLS
    assert im.feeBps() == FEE_BPS
    assert im.tokenAllowed(token)

    tx = im.listModel(MODEL_CID, META_CID, token, PRICE, {"from": seller})
    model_id = tx.return_value
    assert model_id == 1 == im.listingCount()
    assert "ModelListed" in tx.events
    listing = im.getListing(model_id)
    assert (listing[0], listing[1], listing[2]) == (seller, True, token)
    assert (listing[3], listing[4], listing[5]) == (PRICE, MODEL_CID, META_CID)

    token.approve(market, 3 * PRICE, {"from": buyer})
    tx = im.purchase(model_id, 3, PRICE, {"from": buyer})
    assert tx.return_value == 3 * PRICE
    fee = 3 * PRICE * FEE_BPS // 10_000
    assert tx.events["Purchased"]["fee"] == fee
    assert im.earnings(seller, token) == 3 * PRICE - fee
    assert im.protocolFees(token) == fee
