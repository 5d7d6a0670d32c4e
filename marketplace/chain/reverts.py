"""Contract custom errors (and OpenZeppelin's) turned into domain errors with a human
message that carries the offending values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    Web3RPCError,
)

from marketplace import errors
from marketplace.chain.artifacts import CONTRACT_NAMES, load_artifact

# name -> (domain error class, message template over the decoded arguments)
_REVERTS: dict[str, tuple[type[errors.ContractRevert], Callable[..., str]]] = {
    "UnknownModel": (errors.ModelNotFound, lambda m: f"model {m} does not exist"),
    "NotSeller": (
        errors.NotSeller,
        lambda m, caller, seller: (
            f"only the seller of model {m} ({seller}) can change it, not {caller}"
        ),
    ),
    "ListingInactive": (errors.ListingInactive, lambda m: f"model {m} is delisted"),
    "ListingActive": (errors.ListingActive, lambda m: f"model {m} is already listed"),
    "TokenNotAllowed": (
        errors.TokenNotAllowed,
        lambda t: f"token {t} is not on the marketplace's allowlist",
    ),
    "PriceAboveMax": (
        errors.PriceAboveMax,
        lambda price, mx: (
            f"the price per call is {price}, above the maximum of {mx} you agreed to pay"
        ),
    ),
    "InvalidPrice": (
        errors.InvalidPrice,
        lambda p: f"a price per call must be above 0 and below 2**96, not {p}",
    ),
    "ZeroCalls": (errors.InvalidArgument, lambda: "a purchase must be for at least one call"),
    "TooManyCalls": (
        errors.InvalidArgument,
        lambda calls, mx: f"a purchase may buy at most {mx} calls, not {calls}",
    ),
    "EmptyCid": (errors.InvalidArgument, lambda: "the model and metadata CIDs must not be empty"),
    "ZeroAddress": (errors.InvalidArgument, lambda: "the zero address is not allowed here"),
    "FeeAboveCap": (
        errors.FeeAboveCap,
        lambda fee, cap: f"a fee of {fee} bps is above the hard cap of {cap} bps",
    ),
    "NothingToWithdraw": (
        errors.NothingToWithdraw,
        lambda acct, token: f"{acct} has nothing to withdraw in token {token}",
    ),
    "EnforcedPause": (
        errors.MarketplacePaused,
        lambda: "the marketplace is paused: no listings or purchases (withdrawals still work)",
    ),
    "ExpectedPause": (errors.InvalidArgument, lambda: "the marketplace is not paused"),
    "OwnableUnauthorizedAccount": (
        errors.NotOwner,
        lambda acct: f"only the marketplace owner can do this, and {acct} is not the owner",
    ),
    "OwnableInvalidOwner": (errors.InvalidArgument, lambda o: f"{o} cannot be the owner"),
    "ERC20InsufficientBalance": (
        errors.InsufficientFunds,
        lambda who, have, need: f"{who} holds {have} tokens but {need} are needed",
    ),
    "ERC20InsufficientAllowance": (
        errors.InsufficientAllowance,
        lambda spender, have, need: (
            f"the marketplace ({spender}) may spend {have} of your tokens but {need} are"
            " needed: approve it first"
        ),
    ),
    "ERC2612ExpiredSignature": (
        errors.PermitInvalid,
        lambda deadline: f"the permit expired at {deadline}",
    ),
    "ERC2612InvalidSigner": (
        errors.PermitInvalid,
        lambda signer, owner: f"the permit was signed by {signer}, not by {owner}",
    ),
    "SafeERC20FailedOperation": (
        errors.InsufficientFunds,
        lambda token: f"the token {token} refused the transfer",
    ),
}


@cache
def _error_abis(artifacts_dir: Path) -> dict[bytes, tuple[str, list[str]]]:
    """selector -> (error name, argument types), from every artifact's ABI."""
    table: dict[bytes, tuple[str, list[str]]] = {}
    for name in CONTRACT_NAMES:
        for item in load_artifact(artifacts_dir, name).abi:
            if item.get("type") != "error":
                continue
            types = [arg["type"] for arg in item["inputs"]]
            selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
            table[selector] = (item["name"], types)
    return table


def _format_arg(value: object) -> object:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value


def decode_revert(artifacts_dir: Path, data: str | bytes) -> errors.ContractRevert:
    """The domain error for a contract's revert data (custom error, Error(string), Panic)."""
    raw = HexBytes(data)
    selector, payload = bytes(raw[:4]), bytes(raw[4:])
    known = _error_abis(artifacts_dir).get(selector)
    if known is None:
        return errors.ContractRevert(f"the contract reverted (data {raw.to_0x_hex()[:74]})")
    name, types = known
    try:
        args = tuple(_format_arg(a) for a in abi_decode(types, payload))
    except Exception:
        return errors.ContractRevert(f"the contract reverted with a malformed {name} error", name)
    cls, template = _REVERTS.get(name, (errors.ContractRevert, None))
    message = template(*args) if template else f"the contract reverted: {name}{args}"
    return cls(message, name, args)


@contextmanager
def revert_errors(artifacts_dir: Path) -> Iterator[None]:
    """Turn web3's revert exceptions into domain errors with a human message."""
    try:
        yield
    except ContractCustomError as exc:
        raise decode_revert(artifacts_dir, str(exc.data)) from None
    except ContractPanicError as exc:
        raise errors.ContractRevert(f"the contract panicked: {exc.message}") from None
    except ContractLogicError as exc:
        raise errors.ContractRevert(f"the contract reverted: {exc.message}") from None
    except Web3RPCError as exc:
        raise errors.ChainError(f"the chain refused the request: {exc.message}") from None
