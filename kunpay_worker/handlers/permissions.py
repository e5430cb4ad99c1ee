"""What an app may do (KUNPAY_APPS): payouts off unless enabled, refunds, amount limits.

The app is the broker user RabbitMQ verified (the AMQP ``user_id``). A refusal is a
``payment.rejected`` with a reason that says which setting decides it.
"""

from __future__ import annotations

from decimal import Decimal

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.settings import Settings

__all__ = ["amount_refusal", "balance_refusal", "payment_refusal", "refund_refusal"]


def payment_refusal(
    settings: Settings, app: str, kind: TransactionType, amount: Decimal
) -> str | None:
    if kind is TransactionType.DISBURSEMENT and not settings.policy(app).payouts:
        return f"NOT_PERMITTED: app {app!r} may not make payouts (KUNPAY_APPS)"
    return amount_refusal(settings, app, amount)


def refund_refusal(settings: Settings, app: str) -> str | None:
    if not settings.policy(app).refunds:
        return f"NOT_PERMITTED: app {app!r} may not refund (KUNPAY_APPS)"
    return None


def amount_refusal(settings: Settings, app: str, amount: Decimal) -> str | None:
    limit = settings.policy(app).max_amount
    if limit is not None and amount > limit:
        return (
            f"AMOUNT_OVER_LIMIT: {amount.normalize():f} is over the {limit.normalize():f} "
            f"app {app!r} may move at once (KUNPAY_APPS)"
        )
    return None


def balance_refusal(settings: Settings, app: str) -> str | None:
    if not settings.policy(app).payouts:
        return f"app {app!r} may not read the merchant balance: payouts are not enabled for it"
    return None
