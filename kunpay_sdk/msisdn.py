"""Phone numbers: parsing, E.164 normalisation and operator detection (offline).

Operator detection uses the carrier data shipped with ``phonenumbers`` (Cameroon today: MTN
650–654, 670–679, 680–683; Orange 640–642, 655–659, 686–689, 690–699; Nexttel 660–669,
684–685; Camtel 620–629). The tests pin that table so a data update that moves a range fails
loudly instead of routing money to the wrong operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberType, carrier

from kunpay_sdk.errors import InvalidPhoneNumber, UnknownProvider, UnsupportedOperator

__all__ = [
    "PROVIDER_OPERATORS",
    "Msisdn",
    "Operator",
    "check_operator",
    "check_provider",
    "parse_msisdn",
]


class Operator(StrEnum):
    MTN = "MTN"
    ORANGE = "ORANGE"
    NEXTTEL = "NEXTTEL"
    CAMTEL = "CAMTEL"


# The provider keys an app names, and the operators' numbers each key can move money for.
# Which backend serves a key is the worker's setting; the operators a key reaches are not.
PROVIDER_OPERATORS: dict[str, frozenset[Operator]] = {
    "MTN_CAMEROON": frozenset({Operator.MTN}),
    "ORANGE_CAMEROON": frozenset({Operator.ORANGE}),
    "PAWAPAY": frozenset({Operator.MTN, Operator.ORANGE}),
    "FLUTTERWAVE": frozenset({Operator.MTN, Operator.ORANGE}),
}

_CARRIERS = {
    "MTN Cameroon": Operator.MTN,
    "Orange": Operator.ORANGE,
    "NEXTTEL": Operator.NEXTTEL,
    "Camtel": Operator.CAMTEL,
}

# MTN's own sandbox (momodeveloper.mtn.com) only takes its Swedish-looking test numbers.
_MTN_SANDBOX_NUMBER = re.compile(r"^\+?467331234\d\d$")
_ALLOWED_CHARS = re.compile(r"^[+\d\s().-]+$")


@dataclass(frozen=True, slots=True)
class Msisdn:
    e164: str  # "+237670000000"
    operator: Operator

    @property
    def digits(self) -> str:
        """The form providers want in bodies: country code and number, no '+'."""
        return self.e164.removeprefix("+")

    @property
    def masked(self) -> str:
        """For logs: everything but the last three digits hidden."""
        return "*" * (len(self.e164) - 3) + self.e164[-3:]


def parse_msisdn(raw: object, *, sandbox: bool = False) -> Msisdn:
    """Parse a Cameroon mobile number given with or without 237 / +237 / 00237.

    Raises InvalidPhoneNumber for anything that is not a valid Cameroon mobile number (with
    ``sandbox=True``, MTN's sandbox test numbers 46733123450–99 are accepted as MTN too).
    """
    if not isinstance(raw, str):
        raise InvalidPhoneNumber(f"phone number must be a string, got {type(raw).__name__}")
    return _parse_text(raw, sandbox)


# phonenumbers takes a fraction of a millisecond per number, and the worker parses a payment's
# number at intake and again at every provider call: the answers (immutable) are remembered.
# Invalid numbers raise, and are not remembered.
@lru_cache(maxsize=4096)
def _parse_text(raw: str, sandbox: bool) -> Msisdn:
    text = raw.strip()
    if not text or len(text) > 32 or not _ALLOWED_CHARS.match(text):
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number")
    compact = re.sub(r"[\s().-]", "", text)
    if sandbox and _MTN_SANDBOX_NUMBER.match(compact):
        return Msisdn(e164="+" + compact.removeprefix("+"), operator=Operator.MTN)
    try:
        number = phonenumbers.parse(compact, "CM")
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number: {exc}") from exc
    if number.country_code != 237 or not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber(f"{raw!r} is not a valid Cameroon phone number")
    if phonenumbers.number_type(number) != PhoneNumberType.MOBILE:
        raise InvalidPhoneNumber(f"{raw!r} is not a mobile number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    operator = _CARRIERS.get(carrier.name_for_number(number, "en"))
    if operator is None:
        raise InvalidPhoneNumber(f"{raw!r}: no known mobile operator for this number")
    return Msisdn(e164=e164, operator=operator)


def check_provider(provider: object) -> str:
    if not isinstance(provider, str) or provider not in PROVIDER_OPERATORS:
        known = ", ".join(sorted(PROVIDER_OPERATORS))
        raise UnknownProvider(f"unknown provider key {provider!r}; known keys: {known}")
    return provider


def check_operator(provider: str, msisdn: Msisdn) -> None:
    """Raise UnsupportedOperator when no backend of ``provider`` reaches this number's operator."""
    served = PROVIDER_OPERATORS[provider]
    if msisdn.operator not in served:
        names = ", ".join(sorted(served))
        raise UnsupportedOperator(
            f"{msisdn.masked} is a {msisdn.operator} number; {provider} serves {names} numbers"
        )
