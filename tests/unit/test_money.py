from __future__ import annotations

from decimal import Decimal

import pytest

from kunpay_sdk.errors import InvalidAmount, InvalidCurrency, ValidationError
from kunpay_sdk.money import check_currency, format_amount, parse_amount, round_up


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (Decimal("5000"), "XAF", Decimal("5000")),
        (Decimal("5000.00"), "XAF", Decimal("5000")),
        (Decimal("5E+3"), "XAF", Decimal("5000")),
        (5000, "XAF", Decimal("5000")),
        (Decimal("1"), "XAF", Decimal("1")),
        (Decimal("12.5"), "EUR", Decimal("12.50")),
        (Decimal("0.01"), "EUR", Decimal("0.01")),
    ],
)
def test_valid_amounts_are_normalised_to_the_currency_exponent(
    amount: Decimal | int, currency: str, expected: Decimal
) -> None:
    value = parse_amount(amount, currency)
    assert value == expected
    assert value.as_tuple().exponent == expected.as_tuple().exponent


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        (5000.0, "XAF", "Decimal"),
        ("5000", "XAF", "Decimal"),
        (True, "XAF", "Decimal"),
        (None, "XAF", "Decimal"),
        (Decimal("0"), "XAF", "greater than zero"),
        (Decimal("-5"), "XAF", "greater than zero"),
        (Decimal("5000.5"), "XAF", "whole units"),
        (Decimal("0.001"), "EUR", "2 decimal places"),
        (Decimal("NaN"), "XAF", "finite"),
        (Decimal("Infinity"), "XAF", "finite"),
        (Decimal("1e12"), "XAF", "maximum"),
    ],
)
def test_invalid_amounts_raise_a_value_error_saying_why(
    amount: object, currency: str, message: str
) -> None:
    with pytest.raises(InvalidAmount, match=message) as caught:
        parse_amount(amount, currency)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ValidationError)


def test_xaf_has_exponent_zero_in_the_wire_format() -> None:
    assert format_amount(Decimal("5000"), "XAF") == "5000"
    assert format_amount(Decimal("5E+3"), "XAF") == "5000"
    assert format_amount(Decimal("12.5"), "EUR") == "12.50"


def test_round_up_never_rounds_down() -> None:
    assert round_up(Decimal("5000.01"), "XAF") == Decimal("5001")
    assert round_up(Decimal("5000"), "XAF") == Decimal("5000")


@pytest.mark.parametrize(
    ("currency", "sandbox"), [("USD", False), ("xaf", False), (None, False), ("EUR", False)]
)
def test_unknown_or_sandbox_only_currencies_are_refused(currency: object, sandbox: bool) -> None:
    with pytest.raises(InvalidCurrency):
        check_currency(currency, sandbox=sandbox)


def test_eur_is_accepted_in_sandbox_mode() -> None:
    assert check_currency("EUR", sandbox=True) == "EUR"
