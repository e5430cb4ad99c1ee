"""The ``collect`` command (DESIGN.md §5): parse, record, then hand over to the engine."""

from __future__ import annotations

import structlog
from pydantic import ValidationError as PydanticValidationError

from kunpay_sdk.contracts import (
    CollectCommand,
    ValidatedCollect,
    transaction_id_for,
    validate_collect,
)
from kunpay_sdk.errors import ValidationError
from kunpay_worker.engine import Engine
from kunpay_worker.messaging import Delivery, Reject, Retry
from kunpay_worker.providers.registry import rejection_for
from kunpay_worker.settings import Settings
from kunpay_worker.storage import repository as repo

__all__ = ["handle_collect"]

log = structlog.get_logger("kunpay.collect")


def parse_command(delivery: Delivery) -> tuple[str, CollectCommand]:
    """The app identity and the command, or Reject (dead-letter) for what is not a command."""
    message = delivery.message
    app = message.user_id
    if not app:
        raise Reject("no_app_identity", "command without the AMQP user_id property")
    try:
        command = CollectCommand.model_validate_json(message.body)
    except PydanticValidationError as exc:
        raise Reject("malformed", str(exc)[:1000]) from exc
    expected = transaction_id_for(app, command.operation, command.idempotency_key)
    if command.transaction_id != expected:
        raise Reject(
            "transaction_id_mismatch",
            f"transaction_id {command.transaction_id} is not the one app {app!r} and key "
            f"{command.idempotency_key!r} give ({expected})",
        )
    return app, command


def validate(
    command: CollectCommand, settings: Settings
) -> tuple[ValidatedCollect | None, str | None, str | None]:
    """(fields, rejection reason, backend): the money/number rules, then what this worker can do."""
    try:
        fields = validate_collect(
            provider=command.provider,
            amount=command.amount,
            currency=command.currency,
            phone_number=command.phone_number,
            order_id=command.order_id,
            user_id=command.user_id,
            sandbox=settings.accept_sandbox_numbers,
        )
    except ValidationError as exc:
        return None, f"INVALID: {exc}", None
    backend = settings.providers.get(fields.provider)
    reason = rejection_for(settings, fields.provider, "collect", fields.currency)
    if reason is not None:
        return fields, f"UNSUPPORTED: {reason}", backend
    return fields, None, backend


async def handle_collect(delivery: Delivery, *, engine: Engine, settings: Settings) -> None:
    app, command = parse_command(delivery)
    structlog.contextvars.bind_contextvars(
        command_id=str(command.command_id),
        transaction_id=str(command.transaction_id),
        correlation_id=command.correlation_id,
        provider=command.provider,
        attempt=delivery.attempt,
    )
    try:
        await _handle(command, app, engine, settings)
    except Exception as exc:
        # A valid command must not end in the dead-letter queue: retry it, however long.
        raise Retry(f"{type(exc).__name__}: {exc}", keep_trying=True) from exc
    finally:
        structlog.contextvars.clear_contextvars()


async def _handle(command: CollectCommand, app: str, engine: Engine, settings: Settings) -> None:
    fields, rejection, backend = validate(command, settings)
    intake = await repo.take_in_collect(
        command, app=app, fields=fields, rejection=rejection, backend=backend, plan=engine.plan
    )
    engine.notify()
    tx = intake.transaction
    if tx is not None:
        await engine.after_intake(tx)
        tx = await repo.load(tx.id)
    log.info(
        "command handled",
        operation=command.operation,
        intake=str(intake.outcome) if intake.outcome else "REDELIVERY",
        status=str(tx.status) if tx else "REJECTED",
        initiation=str(tx.initiation) if tx else None,
        reason=rejection,
    )
