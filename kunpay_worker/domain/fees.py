"""Fees of a payment type (the old package's formula, in Decimal).

To net ``net`` after a percentage and a fixed fee on the gross, charge

    gross = 100 × (net + fixed fees) / (100 − percentage fees)

rounded *up* to the currency's exponent (whole XAF), so the merchant nets at least ``net``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from kunpay_sdk.money import CURRENCY_EXPONENTS, round_up

__all__ = ["FeeError", "FeeSchedule", "FeeSplit", "gross_for", "split_gross"]

HUNDRED = Decimal(100)


class FeeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    fixed_provider: Decimal
    percentage_provider: Decimal
    fixed_platform: Decimal
    percentage_platform: Decimal

    def __post_init__(self) -> None:
        for name in (
            "fixed_provider",
            "percentage_provider",
            "fixed_platform",
            "percentage_platform",
        ):
            if getattr(self, name) < 0:
                raise FeeError(f"{name} cannot be negative")
        if self.percentage >= HUNDRED:
            raise FeeError(
                f"percentage fees sum to {self.percentage.normalize():f}%: with 100% or more "
                "nothing is left "
                "for the merchant"
            )

    @property
    def percentage(self) -> Decimal:
        return self.percentage_provider + self.percentage_platform

    @property
    def fixed(self) -> Decimal:
        return self.fixed_provider + self.fixed_platform


@dataclass(frozen=True, slots=True)
class FeeSplit:
    gross: Decimal
    net: Decimal
    provider_fee: Decimal
    platform_fee: Decimal

    @property
    def fee(self) -> Decimal:
        return self.gross - self.net


def _floor(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-CURRENCY_EXPONENTS[currency]), rounding=ROUND_FLOOR)


def _split(gross: Decimal, net: Decimal, fees: FeeSchedule, currency: str) -> FeeSplit:
    provider_fee = round_up(
        fees.fixed_provider + gross * fees.percentage_provider / HUNDRED, currency
    )
    provider_fee = min(provider_fee, gross - net)
    return FeeSplit(
        gross=gross, net=net, provider_fee=provider_fee, platform_fee=gross - net - provider_fee
    )


def gross_for(net: Decimal, fees: FeeSchedule, currency: str) -> FeeSplit:
    """What to charge so the merchant nets at least ``net``."""
    if net <= 0:
        raise FeeError(f"the net amount must be greater than zero, got {net}")
    if net != _floor(net, currency):
        exponent = CURRENCY_EXPONENTS[currency]
        raise FeeError(f"{currency} amounts have {exponent} decimal places; got {net}")
    gross = round_up(HUNDRED * (net + fees.fixed) / (HUNDRED - fees.percentage), currency)
    return _split(gross, net, fees, currency)


def split_gross(gross: Decimal, fees: FeeSchedule, currency: str) -> FeeSplit:
    """The breakdown of an amount charged: what the merchant nets (rounded down) and the fees."""
    net = _floor(gross * (HUNDRED - fees.percentage) / HUNDRED - fees.fixed, currency)
    if net <= 0:
        raise FeeError(f"{gross} {currency} does not cover the fees of this payment type")
    return _split(gross, net, fees, currency)
