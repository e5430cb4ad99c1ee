from __future__ import annotations

import pytest

from kunpay_sdk.errors import InvalidPhoneNumber, UnsupportedOperator
from kunpay_sdk.msisdn import Operator, check_operator, parse_msisdn

# Cameroon's mobile ranges (PROVIDERS.md): the three digits after 237 pick the operator.
RANGES = (
    [(f"{p}", Operator.MTN) for p in [*range(650, 655), *range(670, 680), *range(680, 684)]]
    + [
        (f"{p}", Operator.ORANGE)
        for p in [*range(640, 643), *range(655, 660), *range(686, 690), *range(690, 700)]
    ]
    + [(f"{p}", Operator.NEXTTEL) for p in [*range(660, 670), 684, 685]]
    + [(f"{p}", Operator.CAMTEL) for p in range(620, 630)]
)


@pytest.mark.parametrize(("prefix", "operator"), RANGES)
def test_operator_detection_follows_the_cameroon_ranges(prefix: str, operator: Operator) -> None:
    assert parse_msisdn(prefix + "123456").operator is operator


@pytest.mark.parametrize("prefix", ["655", "656", "657", "658", "659", "686", "687", "688", "689"])
def test_655_to_659_and_686_to_689_are_orange(prefix: str) -> None:
    assert parse_msisdn(prefix + "000000").operator is Operator.ORANGE


@pytest.mark.parametrize(
    "raw",
    [
        "670000000",
        "237670000000",
        "+237670000000",
        "00237670000000",
        " 6 70 00 00 00 ",
        "+237 670-00-00-00",
        "(+237) 670 000 000",
    ],
)
def test_every_form_normalises_to_one_e164(raw: str) -> None:
    parsed = parse_msisdn(raw)
    assert parsed.e164 == "+237670000000"
    assert parsed.digits == "237670000000"


@pytest.mark.parametrize(
    "raw",
    [
        "237237670000000",  # never double the country code
        "67000000",  # too short
        "6700000001",  # too long
        "222123456",  # fixed line
        "+33612345678",  # not Cameroon
        "46733123450",  # MTN's sandbox number without sandbox mode
        "",
        "   ",
        "six-seven-zero",
        "670000000; DROP TABLE",
        "6" * 40,
    ],
)
def test_what_is_not_a_cameroon_mobile_number_is_refused(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        parse_msisdn(raw)


@pytest.mark.parametrize("value", [670000000, None, b"670000000"])
def test_a_phone_number_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidPhoneNumber, match="string"):
        parse_msisdn(value)


def test_mtn_sandbox_numbers_are_accepted_in_sandbox_mode() -> None:
    parsed = parse_msisdn("46733123450", sandbox=True)
    assert parsed.e164 == "+46733123450"
    assert parsed.operator is Operator.MTN


@pytest.mark.parametrize(
    ("provider", "number", "ok"),
    [
        ("MTN_CAMEROON", "670000000", True),
        ("MTN_CAMEROON", "690000000", False),
        ("ORANGE_CAMEROON", "690000000", True),
        ("ORANGE_CAMEROON", "670000000", False),
        ("PAWAPAY", "655000000", True),
        ("FLUTTERWAVE", "670000000", True),
        ("PAWAPAY", "660000000", False),  # Nexttel: no backend serves it
        ("MTN_CAMEROON", "620000000", False),  # Camtel
    ],
)
def test_a_key_only_takes_numbers_of_the_operators_it_serves(
    provider: str, number: str, ok: bool
) -> None:
    msisdn = parse_msisdn(number)
    if ok:
        check_operator(provider, msisdn)
    else:
        with pytest.raises(UnsupportedOperator, match=str(msisdn.operator)):
            check_operator(provider, msisdn)


def test_masked_form_keeps_the_last_three_digits() -> None:
    assert parse_msisdn("670000123").masked == "**********123"
