"""Per-app permissions (KUNPAY_APPS): payouts off unless enabled, refunds, amount limits."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.handlers.permissions import (
    amount_refusal,
    balance_refusal,
    payment_refusal,
    refund_refusal,
)
from kunpay_worker.settings import AppPolicy, Settings

SETTINGS = Settings(
    apps={
        "treasury": AppPolicy(payouts=True, max_amount=Decimal("100000")),
        "kiosk": AppPolicy(refunds=False),
    }
)


def test_an_unlisted_app_collects_but_does_not_pay_out() -> None:
    assert payment_refusal(SETTINGS, "shop", TransactionType.COLLECTION, Decimal(10**9)) is None
    refusal = payment_refusal(SETTINGS, "shop", TransactionType.DISBURSEMENT, Decimal(1))
    assert refusal is not None
    assert refusal.startswith("NOT_PERMITTED")
    assert balance_refusal(SETTINGS, "shop") is not None
    assert refund_refusal(SETTINGS, "shop") is None


def test_an_enabled_app_pays_out_within_its_limit() -> None:
    ok = payment_refusal(SETTINGS, "treasury", TransactionType.DISBURSEMENT, Decimal("100000"))
    assert ok is None
    over = payment_refusal(SETTINGS, "treasury", TransactionType.COLLECTION, Decimal("100000.01"))
    assert over is not None
    assert over.startswith("AMOUNT_OVER_LIMIT: 100000.01 is over the 100000")
    assert balance_refusal(SETTINGS, "treasury") is None
    assert amount_refusal(SETTINGS, "treasury", Decimal("5")) is None


def test_refunds_can_be_switched_off() -> None:
    refusal = refund_refusal(SETTINGS, "kiosk")
    assert refusal is not None
    assert "may not refund" in refusal


@pytest.mark.parametrize("name", ["shop.eu", "a b", ""])
def test_app_names_that_cannot_be_broker_users_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="app name"):
        Settings(apps={name: AppPolicy()})
