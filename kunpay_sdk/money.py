"""Money as Decimal with the currency's exponent. No floats, ever."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

from kunpay_sdk.errors import InvalidAmount, InvalidCurrency

__all__ = [
    "CURRENCY_EXPONENTS",
    "SANDBOX_ONLY_CURRENCIES",
    "check_currency",
    "format_amount",
    "parse_amount",
    "round_up",
]

# ISO 4217 minor units of the currencies kunpay moves. XAF has no minor unit in practice.
CURRENCY_EXPONENTS: dict[str, int] = {"XAF": 0, "EUR": 2}

# EUR is what MTN's own sandbox accepts; real Cameroon mobile money is XAF.
SANDBOX_ONLY_CURRENCIES = frozenset({"EUR"})

# Wider than any mobile money limit, narrow enough for the database column (18 digits, 4 places).
MAX_AMOUNT = Decimal("100000000000")


def check_currency(currency: object, *, sandbox: bool = False) -> str:
    """Return the currency code, or raise InvalidCurrency."""
    if not isinstance(currency, str):
        raise InvalidCurrency(
            f"currency must be a string such as 'XAF', got {type(currency).__name__}"
        )
    if currency not in CURRENCY_EXPONENTS:
        known = ", ".join(sorted(CURRENCY_EXPONENTS))
        raise InvalidCurrency(f"unknown currency {currency!r}; kunpay moves {known}")
    if currency in SANDBOX_ONLY_CURRENCIES and not sandbox:
        raise InvalidCurrency(
            f"{currency} is only accepted by MTN's test sandbox; "
            "connect with sandbox=True to use it"
        )
    return currency


def parse_amount(amount: object, currency: str) -> Decimal:
    """Validate an amount for ``currency`` and return it normalised (no exponent noise).

    Only ``Decimal`` (or an ``int``) is accepted: a float has already lost the exact value.
    """
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        hint = (
            " (floats cannot represent money exactly; use Decimal('...'))"
            if isinstance(amount, float)
            else ""
        )
        raise InvalidAmount(f"amount must be a Decimal, got {type(amount).__name__}{hint}")
    value = Decimal(amount)
    if not value.is_finite():
        raise InvalidAmount(f"amount must be a finite number, got {value}")
    if value <= 0:
        raise InvalidAmount(f"amount must be greater than zero, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidAmount(f"amount {value} exceeds the maximum {MAX_AMOUNT}")
    exponent = CURRENCY_EXPONENTS[currency]
    try:
        quantised = value.quantize(Decimal(1).scaleb(-exponent))
    except InvalidOperation as exc:
        raise InvalidAmount(f"amount {value} cannot be represented in {currency}") from exc
    if quantised != value:
        unit = "whole units" if exponent == 0 else f"{exponent} decimal places"
        raise InvalidAmount(f"{currency} amounts have {unit}; got {value}")
    return quantised


def format_amount(amount: Decimal, currency: str) -> str:
    """The provider wire form: '5000' for XAF, '12.50' for EUR; never an exponent."""
    exponent = CURRENCY_EXPONENTS[currency]
    return f"{amount.quantize(Decimal(1).scaleb(-exponent)):f}"


def round_up(amount: Decimal, currency: str) -> Decimal:
    """Round up to the currency's exponent (fees are charged so the merchant nets at least net)."""
    exponent = CURRENCY_EXPONENTS[currency]
    return amount.quantize(Decimal(1).scaleb(-exponent), rounding=ROUND_CEILING)
