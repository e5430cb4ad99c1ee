"""The message schema: commands the SDK publishes and events the worker announces.

Everything on the wire is JSON produced from these models, with ``schema_version``. Amounts are
decimal strings. Unknown fields are ignored so that an older reader keeps working when a newer
writer adds optional fields; a reader refuses a ``schema_version`` it does not know.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from kunpay_sdk.errors import InvalidField
from kunpay_sdk.money import check_currency, parse_amount
from kunpay_sdk.msisdn import check_operator, check_provider, parse_msisdn

__all__ = [
    "FINAL_EVENT_TYPES",
    "SCHEMA_VERSION",
    "TRANSACTION_NAMESPACE",
    "CollectCommand",
    "Event",
    "EventType",
    "Operation",
    "RpcReply",
    "RpcRequest",
    "Status",
    "TransactionSnapshot",
    "TransactionType",
    "ValidatedCollect",
    "command_fingerprint",
    "transaction_id_for",
    "validate_collect",
]

SCHEMA_VERSION: Literal[1] = 1

# transaction_id = uuid5(TRANSACTION_NAMESPACE, f"{app}:{operation}:{idempotency_key}").
# Never change it: ids of existing transactions depend on it.
TRANSACTION_NAMESPACE = uuid.UUID("6f1e2d3c-4b5a-5968-8776-a5b4c3d2e1f0")

MAX_KEY_LENGTH = 200
MAX_REF_LENGTH = 200

Text = Annotated[str, StringConstraints(max_length=MAX_REF_LENGTH)]
# Amounts on the wire: anything a decimal(18, 4) column can hold; the money rules come after.
WireAmount = Annotated[Decimal, Field(max_digits=18, decimal_places=4, allow_inf_nan=False)]


class Operation(StrEnum):
    COLLECT = "collect"


class TransactionType(StrEnum):
    COLLECTION = "collection"
    DISBURSEMENT = "disbursement"
    REFUND = "refund"


class Status(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"
    REFUND_FAILED = "REFUND_FAILED"
    REJECTED = "REJECTED"


class EventType(StrEnum):
    INITIATED = "payment.initiated"
    SUCCEEDED = "payment.succeeded"
    FAILED = "payment.failed"
    REFUNDED = "payment.refunded"
    REFUND_FAILED = "payment.refund_failed"
    REJECTED = "payment.rejected"
    DUPLICATE_DETECTED = "payment.duplicate_detected"


FINAL_EVENT_TYPES = frozenset(
    {
        EventType.SUCCEEDED,
        EventType.FAILED,
        EventType.REJECTED,
        EventType.REFUNDED,
        EventType.REFUND_FAILED,
    }
)


def transaction_id_for(app: str, operation: str, idempotency_key: str) -> uuid.UUID:
    """The transaction id a command with this key creates: the same key, the same transaction."""
    return uuid.uuid5(TRANSACTION_NAMESPACE, f"{app}:{operation}:{idempotency_key}")


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CollectCommand(_Wire):
    """Ask the customer's wallet to pay (a collection)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    operation: Literal["collect"] = "collect"
    command_id: uuid.UUID
    transaction_id: uuid.UUID
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH)]
    provider: Text
    amount: WireAmount
    currency: Annotated[str, StringConstraints(max_length=8)]
    phone_number: Annotated[str, StringConstraints(max_length=32)]
    order_id: Text
    user_id: Text
    correlation_id: Text | None = None
    payment_type: Text | None = None
    issued_at: datetime


class ValidatedCollect(BaseModel):
    """A collect command's business fields after the money, number and provider rules."""

    model_config = ConfigDict(frozen=True)

    provider: str
    amount: Decimal
    currency: str
    phone_number: str  # E.164
    order_id: str
    user_id: str


def _check_text(name: str, value: object, *, max_length: int = MAX_REF_LENGTH) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(f"{name} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidField(f"{name} is longer than {max_length} characters")
    return value


def validate_collect(
    *,
    provider: object,
    amount: object,
    currency: object,
    phone_number: object,
    order_id: object,
    user_id: object,
    sandbox: bool = False,
) -> ValidatedCollect:
    """Apply every rule a collection must pass; raise a ValidationError saying what is wrong."""
    key = check_provider(provider)
    code = check_currency(currency, sandbox=sandbox)
    value = parse_amount(amount, code)
    msisdn = parse_msisdn(phone_number, sandbox=sandbox)
    check_operator(key, msisdn)
    return ValidatedCollect(
        provider=key,
        amount=value,
        currency=code,
        phone_number=msisdn.e164,
        order_id=_check_text("order_id", order_id),
        user_id=_check_text("user_id", user_id),
    )


def check_idempotency_key(key: object) -> str:
    return _check_text("idempotency_key", key, max_length=MAX_KEY_LENGTH)


def check_correlation_id(value: object) -> str | None:
    return None if value is None else _check_text("correlation_id", value)


def command_fingerprint(
    operation: str, fields: ValidatedCollect, original: uuid.UUID | None = None
) -> str:
    """What makes two commands with one idempotency key "the same command"."""
    canonical = json.dumps(
        {
            "operation": operation,
            "provider": fields.provider,
            "amount": str(fields.amount.normalize()),
            "currency": fields.currency,
            "phone_number": fields.phone_number,
            "order_id": fields.order_id,
            "user_id": fields.user_id,
            "original": str(original) if original else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class TransactionSnapshot(_Wire):
    """A transaction as it stood when an event was written (or when get() answered)."""

    id: uuid.UUID
    type: TransactionType
    app: str
    provider: str
    backend: str | None
    amount: Decimal
    currency: str
    phone_number: str
    status: Status
    order_id: str
    user_id: str
    idempotency_key: str
    provider_reference: str | None = None
    provider_transaction_id: str | None = None
    failure_reason: str | None = None
    original_transaction_id: uuid.UUID | None = None
    created_at: datetime
    updated_at: datetime


class Event(_Wire):
    """A lifecycle event, as published on ``kunpay.events``.

    ``sequence`` increases per transaction; ``event_id`` identifies the event across
    redeliveries (delivery is at-least-once: dedupe on it). ``transaction`` is None only for a
    command-level rejection (an idempotency key reused with different content), which names the
    rejected ``command_id`` and never touches the existing transaction.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID
    type: EventType
    occurred_at: datetime
    sequence: int
    correlation_id: str | None = None
    command_id: uuid.UUID | None = None
    transaction: TransactionSnapshot | None
    reason: str | None = None
    original_transaction: TransactionSnapshot | None = None
    provider_refund_id: str | None = None
    late: bool = False

    _delivery: Any = PrivateAttr(default=None)

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES

    def process(self, *, reraise: bool = False) -> AbstractAsyncContextManager[None]:
        """Acknowledge this event once the ``async with`` block succeeds (subscriptions only).

        An exception in the block returns the event to the queue; after the subscription's
        delivery limit the broker moves it to the subscriber's own dead-letter queue. The
        exception is logged and swallowed so the subscription keeps running, unless
        ``reraise=True``.
        """
        if self._delivery is None:
            raise RuntimeError("process() is only available on events received from events()")
        manager: AbstractAsyncContextManager[None] = self._delivery.process(reraise=reraise)
        return manager


class RpcRequest(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    method: Literal["get"]
    transaction_id: uuid.UUID


class RpcReply(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    ok: bool
    error_code: str | None = None
    error: str | None = None
    transaction: TransactionSnapshot | None = None
    final_event: Event | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)
