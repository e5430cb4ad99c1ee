"""``collect`` and ``disburse``: validate, price with the payment type, take in, send."""

from __future__ import annotations

from kunpay_sdk.contracts import (
    CollectCommand,
    DisburseCommand,
    TransactionType,
    ValidatedPayment,
    command_fingerprint,
    validate_payment,
)
from kunpay_sdk.errors import ValidationError
from kunpay_worker.domain.fees import FeeError, split_gross
from kunpay_worker.engine import Engine
from kunpay_worker.handlers.common import SHORT_NAME_LENGTH, bounded, can_match, proceed
from kunpay_worker.handlers.permissions import payment_refusal
from kunpay_worker.providers.base import CAPABILITY_FOR
from kunpay_worker.providers.registry import rejection_for
from kunpay_worker.settings import Settings
from kunpay_worker.storage.intake import NewTransaction, raw_fingerprint, take_in_payment
from kunpay_worker.storage.models import PaymentType

__all__ = ["handle"]


def _kind(command: CollectCommand | DisburseCommand) -> TransactionType:
    if isinstance(command, CollectCommand):
        return TransactionType.COLLECTION
    return TransactionType.DISBURSEMENT


async def _price(new: NewTransaction, payment_type: str, fields: ValidatedPayment) -> None:
    """Store the fee breakdown of ``payment_type``, or reject the command."""
    row = (
        await PaymentType.get_or_none(short_name=payment_type)
        if can_match(payment_type, SHORT_NAME_LENGTH)
        else None
    )
    if row is None or not row.is_active:
        new.rejection = bounded(f"INVALID: no active payment type {payment_type!r}")
        return
    if row.provider != fields.provider:
        new.rejection = bounded(
            f"INVALID: payment type {payment_type!r} is for {row.provider}, not {fields.provider}"
        )
        return
    if row.currency != fields.currency:
        new.rejection = bounded(
            f"INVALID: payment type {payment_type!r} is priced in {row.currency}"
        )
        return
    try:
        split = split_gross(fields.amount, row.fee_schedule(), fields.currency)
    except FeeError as exc:
        new.rejection = f"INVALID: {exc}"
        return
    new.payment_type_id = row.id
    new.gross_amount, new.fee_amount, new.net_amount = split.gross, split.fee, split.net


async def handle(
    command: CollectCommand | DisburseCommand, app: str, engine: Engine, settings: Settings
) -> None:
    kind = _kind(command)
    try:
        fields = validate_payment(
            provider=command.provider,
            amount=command.amount,
            currency=command.currency,
            phone_number=command.phone_number,
            order_id=command.order_id,
            user_id=command.user_id,
            sandbox=settings.accept_sandbox_numbers,
        )
    except ValidationError as exc:
        new = NewTransaction(
            type=kind,
            provider=command.provider,
            backend=None,
            amount=command.amount,
            currency=command.currency,
            phone_number=command.phone_number,
            order_id=command.order_id,
            user_id=command.user_id,
            rejection=bounded(f"INVALID: {exc}"),
        )
        fingerprint = raw_fingerprint(command)
    else:
        new = NewTransaction(
            type=kind,
            provider=fields.provider,
            backend=settings.providers.get(fields.provider),
            amount=fields.amount,
            currency=fields.currency,
            phone_number=fields.phone_number,
            order_id=fields.order_id,
            user_id=fields.user_id,
            rejection=rejection_for(
                settings, fields.provider, CAPABILITY_FOR[kind], fields.currency, fields.operator
            ),
        )
        if new.rejection is None:
            new.rejection = payment_refusal(settings, app, kind, fields.amount)
        if new.rejection is None and command.payment_type is not None:
            await _price(new, command.payment_type, fields)
        fingerprint = command_fingerprint(
            command.operation,
            {
                "provider": fields.provider,
                "amount": fields.amount,
                "currency": fields.currency,
                "phone_number": fields.phone_number,
                "order_id": fields.order_id,
                "user_id": fields.user_id,
                "payment_type": command.payment_type,
            },
        )
    intake = await take_in_payment(
        command,
        app=app,
        new=new,
        fingerprint=fingerprint,
        plan=engine.plan,
        claim=engine.intake_claim,
    )
    await proceed(intake, engine)
