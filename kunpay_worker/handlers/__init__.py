"""One module per command (payments: collect and disburse; refund; retry), one for requests.

:func:`handle_command` is the ``kunpay.commands`` consumer: it tells a command from what is not
one (dead-lettered), and hands the command to its module.
"""

from __future__ import annotations

import time

import structlog
from pydantic import ValidationError as PydanticValidationError

from kunpay_sdk import topology
from kunpay_sdk.contracts import (
    COMMANDS,
    CollectCommand,
    DisburseCommand,
    RefundCommand,
    RetryCommand,
    transaction_id_for,
)
from kunpay_worker.engine import Engine
from kunpay_worker.handlers import payment, refund, retry
from kunpay_worker.messaging import Delivery, Reject, Retry
from kunpay_worker.settings import Settings

__all__ = ["handle_command", "parse_command"]

log = structlog.get_logger("kunpay.commands")

AnyCommand = CollectCommand | DisburseCommand | RefundCommand | RetryCommand


def parse_command(delivery: Delivery) -> tuple[str, AnyCommand]:
    """The app identity and the command, or Reject (dead-letter) for what is not a command."""
    message = delivery.message
    app = message.user_id
    if not app:
        raise Reject("no_app_identity", "command without the AMQP user_id property")
    try:
        command = COMMANDS.validate_json(message.body)
    except PydanticValidationError as exc:
        raise Reject("malformed", str(exc)[:1000]) from exc
    if any(isinstance(v, str) and "\x00" in v for v in command.model_dump().values()):
        # No database column holds it (PostgreSQL refuses NUL in text): never storable.
        raise Reject("malformed", "a text field holds a NUL character")
    expected = transaction_id_for(app, command.operation, command.idempotency_key)
    if command.transaction_id != expected:
        raise Reject(
            "transaction_id_mismatch",
            f"transaction_id {command.transaction_id} is not the one app {app!r} and key "
            f"{command.idempotency_key!r} give ({expected})",
        )
    return app, command


# Commands arrive through kunpay.commands, or from a delay queue through the default exchange.
COMMAND_SOURCES = frozenset({"", topology.COMMANDS_EXCHANGE})
_foreign_logged_at = 0.0


def _foreign(delivery: Delivery) -> bool:
    """A message some other exchange routed into the commands queue. RabbitMQ's permissions
    cannot stop a user with write on the queue (apps: the exchange shares its name) from
    binding it to an exchange it may read, such as kunpay.events: such messages are dropped
    (and the binding named, once a minute) instead of filling the dead-letter table."""
    global _foreign_logged_at
    exchange = delivery.message.exchange or ""
    if exchange in COMMAND_SOURCES:
        return False
    now = time.monotonic()
    if now - _foreign_logged_at > 60:
        _foreign_logged_at = now
        log.warning(
            "dropping messages routed into the commands queue from another exchange: "
            "remove that binding",
            exchange=exchange,
            routing_key=delivery.message.routing_key,
        )
    return True


async def handle_command(delivery: Delivery, *, engine: Engine, settings: Settings) -> None:
    if _foreign(delivery):
        return
    app, command = parse_command(delivery)
    structlog.contextvars.bind_contextvars(
        command_id=str(command.command_id),
        transaction_id=str(command.transaction_id),
        correlation_id=command.correlation_id,
        operation=command.operation,
        provider=getattr(command, "provider", None),  # refunds and retries: their original's
        attempt=delivery.attempt,
    )
    try:
        if isinstance(command, CollectCommand | DisburseCommand):
            await payment.handle(command, app, engine, settings)
        elif isinstance(command, RefundCommand):
            await refund.handle(command, app, engine, settings)
        else:
            await retry.handle(command, app, engine, settings)
    except Exception as exc:
        # A valid command must not end in the dead-letter queue: retry it, however long.
        raise Retry(f"{type(exc).__name__}: {exc}", keep_trying=True) from exc
    finally:
        structlog.contextvars.clear_contextvars()
