from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from kunpay_sdk.contracts import Status, TransactionType
from kunpay_worker.domain.refunds import RefundRefused, refund_amount, refundable

D = Decimal


def amount(**overrides: Any) -> Decimal:
    values: dict[str, Any] = {
        "requested": None,
        "kind": TransactionType.COLLECTION,
        "status": Status.COMPLETED,
        "amount": D("5000"),
        "refunded": D("0"),
        "reserved": D("0"),
        "currency": "XAF",
        "partial_supported": True,
    }
    values.update(overrides)
    return refund_amount(**values)


def test_refundable_counts_refunds_done_and_in_flight() -> None:
    assert refundable(D("5000"), D("1000"), D("1500")) == D("2500")
    assert refundable(D("5000"), D("5000"), D("0")) == D("0")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, D("5000")),
        ({"requested": D("2000")}, D("2000")),
        ({"refunded": D("1000"), "reserved": D("1000")}, D("3000")),
        ({"status": Status.REFUND_FAILED, "refunded": D("1000")}, D("4000")),
        ({"requested": D("5000"), "partial_supported": False}, D("5000")),
    ],
)
def test_what_a_refund_takes(overrides: dict[str, Any], expected: Decimal) -> None:
    assert amount(**overrides) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"status": Status.PENDING}, "PENDING payment cannot be refunded"),
        ({"status": Status.FAILED}, "FAILED payment cannot be refunded"),
        ({"status": Status.REFUNDED}, "REFUNDED payment cannot be refunded"),
        ({"kind": TransactionType.DISBURSEMENT}, "only collections"),
        ({"requested": D("5001")}, "more than the 5000"),
        ({"reserved": D("4000"), "requested": D("1500")}, "more than the 1000"),
        ({"refunded": D("5000")}, "nothing left"),
        ({"requested": D("10.5")}, "decimal places"),
        ({"requested": D("2000"), "partial_supported": False}, "only refunds whole"),
        ({"requested": D("-3000")}, "greater than zero"),
        ({"requested": D("0")}, "greater than zero"),
    ],
)
def test_what_a_refund_cannot_take(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(RefundRefused, match=message):
        amount(**overrides)
