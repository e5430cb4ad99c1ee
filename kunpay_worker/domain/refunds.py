"""How much of a payment can still be refunded (pure)."""

from __future__ import annotations

from decimal import Decimal

from kunpay_sdk.contracts import Status, TransactionType
from kunpay_sdk.money import CURRENCY_EXPONENTS

__all__ = ["REFUNDABLE_FROM", "RefundRefused", "refund_amount", "refundable"]

REFUNDABLE_FROM = frozenset({Status.COMPLETED, Status.REFUND_FAILED})


class RefundRefused(ValueError):
    pass


def refundable(amount: Decimal, refunded: Decimal, reserved: Decimal) -> Decimal:
    """What is left to refund once completed refunds and refunds in flight are counted."""
    return max(amount - refunded - reserved, Decimal(0))


def refund_amount(
    *,
    requested: Decimal | None,
    kind: TransactionType,
    status: Status,
    amount: Decimal,
    refunded: Decimal,
    reserved: Decimal,
    currency: str,
    partial_supported: bool,
) -> Decimal:
    """The amount a new refund takes (``requested`` None: all that is refundable), or
    RefundRefused saying why not."""
    if kind is not TransactionType.COLLECTION:
        raise RefundRefused(f"only collections can be refunded, not a {kind}")
    if status not in REFUNDABLE_FROM:
        raise RefundRefused(
            f"a {status} payment cannot be refunded (only COMPLETED or REFUND_FAILED)"
        )
    left = refundable(amount, refunded, reserved)
    if left <= 0:
        raise RefundRefused(
            f"nothing left to refund: {refunded} refunded and {reserved} being refunded of {amount}"
        )
    if requested is not None and requested <= 0:
        raise RefundRefused(f"a refund amount must be greater than zero, got {requested}")
    value = left if requested is None else requested
    exponent = CURRENCY_EXPONENTS[currency]
    if value != value.quantize(Decimal(1).scaleb(-exponent)):
        raise RefundRefused(f"{currency} amounts have {exponent} decimal places; got {value}")
    if value > left:
        raise RefundRefused(f"{value} {currency} is more than the {left} {currency} left to refund")
    if value < amount and not partial_supported:
        raise RefundRefused(f"this provider only refunds whole payments ({amount} {currency})")
    return value
