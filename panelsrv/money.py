"""Exact money: integer minor units of 1e-5 of the currency, decimal strings only at the edge.

Leaf module. Rates are per 1000 units, so 5 decimals keep a 0.001-per-1000 rate exact for one
unit. Nothing here ever touches a float.
"""

from __future__ import annotations

import functools
import re

SCALE_DIGITS = 5
SCALE = 10**SCALE_DIGITS
# Largest amount accepted anywhere (1e12 currency units): keeps every product below 2**63.
MAX_UNITS = 10**12 * SCALE


class MoneyError(ValueError):
    pass


# Plain decimal text: ASCII digits (str.isdigit and Decimal also take fullwidth and Arabic-Indic
# ones), an optional minus, at most 5 decimals. Matched before any conversion, so nothing is
# rounded: Decimal's 28-digit context would round a long input to fit.
_AMOUNT = re.compile(rf"(-?)([0-9]+)(?:\.([0-9]{{1,{SCALE_DIGITS}}}))?")
_PERCENT = re.compile(r"([0-9]+)(?:\.([0-9]{1,2}))?")
_BLANKS = " \t"  # around a CLI argument or a config value; nothing else is trimmed


def parse(text: str, *, allow_negative: bool = False) -> int:
    """'12.345' -> 1234500. `-?[0-9]+(\\.[0-9]{1,5})?`; the minus only when allowed."""
    match = _AMOUNT.fullmatch(text.strip(_BLANKS))
    if match is None:
        raise MoneyError(f"not a decimal amount with at most {SCALE_DIGITS} decimals: {text!r}")
    sign, whole, frac = match.groups()
    if sign and not allow_negative:
        raise MoneyError(f"must not be negative: {text!r}")
    if len(whole.lstrip("0")) > 13:  # past MAX_UNITS whatever the digits: no huge int()
        raise MoneyError(f"too large: {text!r}")
    result = int(whole) * SCALE + int((frac or "").ljust(SCALE_DIGITS, "0"))
    if result > MAX_UNITS:
        raise MoneyError(f"too large: {text!r}")
    return -result if sign else result


@functools.lru_cache(maxsize=65_536)
def format(units: int) -> str:
    """1234500 -> '12.345'; 1000000 -> '10.00': at least 2 decimals, at most 5, no float.

    Memoized: a 100-order `status` formats 100 charges, mostly the same few amounts."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), SCALE)
    digits = f"{frac:0{SCALE_DIGITS}d}".rstrip("0")
    if len(digits) < 2:
        digits = digits.ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def div_round_half_up(numerator: int, denominator: int) -> int:
    """Integer division rounding half away from zero, for non-negative operands."""
    return (2 * numerator + denominator) // (2 * denominator)


def user_rate(base_rate: int, discount_bp: int, override: int | None = None) -> int:
    """The caller's price per 1000: a user-specific override wins, else base less the discount.

    `discount_bp` is in hundredths of a percent (500 = 5%). Rounded half up to the minor unit,
    once, so the rate `services` shows is exactly the rate `add` charges.
    """
    if override is not None:
        return override
    return div_round_half_up(base_rate * (10_000 - discount_bp), 10_000)


def charge(rate: int, quantity: int, runs: int = 1) -> int:
    """`rate * quantity / 1000 * runs`, rounded half up to the minor unit."""
    return div_round_half_up(rate * quantity * runs, 1000)


def partial_refund(charge_units: int, remains: int, quantity: int) -> int:
    """`charge * min(remains, quantity) / quantity`, rounded down: never more than the charge."""
    if quantity <= 0 or remains <= 0:
        return 0
    return charge_units * min(remains, quantity) // quantity


def parse_percent_bp(text: str, maximum: int = 100) -> int:
    """'5' -> 500, '2.5' -> 250 (basis points); 0 to `maximum` percent, at most 2 decimals."""
    match = _PERCENT.fullmatch(text.strip(_BLANKS))
    if match is None:
        raise MoneyError(f"not a percentage with at most 2 decimals: {text!r}")
    whole, frac = match.groups()
    if len(whole.lstrip("0")) > 12:
        raise MoneyError(f"must be between 0 and {maximum}: {text!r}")
    bp = int(whole) * 100 + int((frac or "").ljust(2, "0"))
    if bp > maximum * 100:
        raise MoneyError(f"must be between 0 and {maximum}: {text!r}")
    return bp
