"""Token amounts as people write them ("0.02") and as the contract holds them (the
token's smallest unit), for every face."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from marketplace import errors


def parse_price(text: str, decimals: int) -> int:
    """A price per call in the token's units ("0.02") as its smallest unit."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise errors.BadRequest(f"price: {text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise errors.BadRequest(f"price: must be above 0, not {text}")
    atomic = value.scaleb(decimals)
    if atomic != atomic.to_integral_value():
        raise errors.BadRequest(f"price: {text} has more than the token's {decimals} decimals")
    if atomic >= 2**96:
        raise errors.BadRequest(f"price: {text} is over the contract's limit (2**96 units)")
    return int(atomic)


def format_units(amount: int, decimals: int) -> str:
    """`amount` smallest units in the token's units, without trailing zeros ("0.001")."""
    text = f"{Decimal(amount).scaleb(-decimals):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
