"""The message schema: commands the SDK publishes, events the worker announces, and requests
on ``kunpay.rpc`` with their replies.

Everything on the wire is JSON produced from these models, with ``schema_version``. Amounts are
decimal strings. Unknown fields are ignored so that an older reader keeps working when a newer
writer adds optional fields; a reader refuses a ``schema_version`` it does not know.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    TypeAdapter,
)

from kunpay_sdk.errors import InvalidAmount, InvalidField
from kunpay_sdk.money import MAX_AMOUNT, check_currency, parse_amount
from kunpay_sdk.msisdn import check_operator, check_provider, parse_msisdn

__all__ = [
    "COMMANDS",
    "FINAL_EVENT_TYPES",
    "RPC_REQUESTS",
    "SCHEMA_VERSION",
    "TRANSACTION_NAMESPACE",
    "AccountHolderInfo",
    "AccountHolderRequest",
    "BalanceInfo",
    "BalanceRequest",
    "CollectCommand",
    "Command",
    "DisburseCommand",
    "Event",
    "EventType",
    "GetRequest",
    "ListRequest",
    "Operation",
    "Quote",
    "QuoteRequest",
    "RefundCommand",
    "RetryCommand",
    "RpcReply",
    "RpcRequest",
    "Status",
    "TransactionSnapshot",
    "TransactionType",
    "ValidatedPayment",
    "VerifyRequest",
    "command_fingerprint",
    "transaction_id_for",
    "validate_payment",
    "validate_refund_amount",
]

SCHEMA_VERSION: Literal[1] = 1

# transaction_id = uuid5(TRANSACTION_NAMESPACE, f"{app}:{operation}:{idempotency_key}").
# Never change it: ids of existing transactions depend on it.
TRANSACTION_NAMESPACE = uuid.UUID("6f1e2d3c-4b5a-5968-8776-a5b4c3d2e1f0")

MAX_KEY_LENGTH = 200
MAX_REF_LENGTH = 200
# The AMQP correlation_id property is a short string.
MAX_CORRELATION_ID_BYTES = 255

Text = Annotated[str, StringConstraints(max_length=MAX_REF_LENGTH)]
# Amounts on the wire: anything a decimal(18, 4) column can hold; the money rules come after.
WireAmount = Annotated[Decimal, Field(max_digits=18, decimal_places=4, allow_inf_nan=False)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH)]
_WIRE_PLACES = Decimal("0.0001")


class Operation(StrEnum):
    COLLECT = "collect"
    DISBURSE = "disburse"
    REFUND = "refund"
    RETRY = "retry"


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


# -- commands ---------------------------------------------------------------------------------


class _Command(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    command_id: uuid.UUID
    transaction_id: uuid.UUID
    idempotency_key: Key
    correlation_id: Text | None = None
    issued_at: datetime


class _PaymentCommand(_Command):
    provider: Text
    amount: WireAmount
    currency: Annotated[str, StringConstraints(max_length=8)]
    phone_number: Annotated[str, StringConstraints(max_length=32)]
    order_id: Text
    user_id: Text
    payment_type: Text | None = None


class CollectCommand(_PaymentCommand):
    """Ask the customer's wallet to pay (a collection)."""

    operation: Literal["collect"] = "collect"


class DisburseCommand(_PaymentCommand):
    """Pay a wallet (a payout)."""

    operation: Literal["disburse"] = "disburse"


class RefundCommand(_Command):
    """Give back all (``amount=None``) or part of a completed collection."""

    operation: Literal["refund"] = "refund"
    original_transaction_id: uuid.UUID
    amount: WireAmount | None = None


class RetryCommand(_Command):
    """Collect a FAILED collection again, as a new transaction with a new provider reference."""

    operation: Literal["retry"] = "retry"
    original_transaction_id: uuid.UUID


Command = Annotated[
    CollectCommand | DisburseCommand | RefundCommand | RetryCommand,
    Field(discriminator="operation"),
]
COMMANDS: TypeAdapter[CollectCommand | DisburseCommand | RefundCommand | RetryCommand] = (
    TypeAdapter(Command)
)


class ValidatedPayment(BaseModel):
    """A collection's or payout's business fields after the money, number and provider rules."""

    model_config = ConfigDict(frozen=True)

    provider: str
    amount: Decimal
    currency: str
    phone_number: str  # E.164
    operator: str
    order_id: str
    user_id: str


def check_text(name: str, value: object, *, max_length: int = MAX_REF_LENGTH) -> str:
    """A text field as the wire and the worker's columns take it: a non-empty string of at most
    ``max_length`` characters, valid Unicode (no lone surrogates: it could not be encoded) and
    without NUL (no database text column holds it; the worker dead-letters such a command)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(f"{name} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidField(f"{name} is longer than {max_length} characters")
    if "\x00" in value:
        raise InvalidField(f"{name} holds a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidField(f"{name} is not valid Unicode (a lone surrogate)") from exc
    return value


def validate_payment(
    *,
    provider: object,
    amount: object,
    currency: object,
    phone_number: object,
    order_id: object,
    user_id: object,
    sandbox: bool = False,
) -> ValidatedPayment:
    """Apply every rule a collection or payout must pass; raise a ValidationError saying what
    is wrong."""
    key = check_provider(provider)
    code = check_currency(currency, sandbox=sandbox)
    value = parse_amount(amount, code)
    msisdn = parse_msisdn(phone_number, sandbox=sandbox)
    check_operator(key, msisdn)
    return ValidatedPayment(
        provider=key,
        amount=value,
        currency=code,
        phone_number=msisdn.e164,
        operator=str(msisdn.operator),
        order_id=check_text("order_id", order_id),
        user_id=check_text("user_id", user_id),
    )


def validate_refund_amount(amount: object) -> Decimal | None:
    """None (refund all that is refundable) or a positive Decimal the wire carries (at most
    four decimal places); the currency's exponent is checked by the worker, which knows the
    original payment's currency. Also the rule for quote()'s net amount."""
    if amount is None:
        return None
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise InvalidAmount(f"amount must be a Decimal or None, got {type(amount).__name__}")
    value = Decimal(amount)
    if not value.is_finite() or value <= 0:
        raise InvalidAmount(f"amount must be greater than zero, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidAmount(f"amount {value} exceeds the maximum {MAX_AMOUNT}")
    # Below MAX_AMOUNT, four places make at most 16 digits: within the wire's decimal(18, 4).
    if value != value.quantize(_WIRE_PLACES):
        raise InvalidAmount(f"amount {value} has more than 4 decimal places")
    return value


def check_idempotency_key(key: object) -> str:
    return check_text("idempotency_key", key, max_length=MAX_KEY_LENGTH)


def check_correlation_id(value: object) -> str | None:
    """None, or a text that also fits the AMQP ``correlation_id`` property the SDK publishes
    it in (a short string: 255 bytes of UTF-8)."""
    if value is None:
        return None
    text = check_text("correlation_id", value)
    if len(text.encode()) > MAX_CORRELATION_ID_BYTES:
        raise InvalidField(
            f"correlation_id is longer than {MAX_CORRELATION_ID_BYTES} bytes of UTF-8"
        )
    return text


def check_payment_type(value: object) -> str | None:
    return None if value is None else check_text("payment_type", value)


def command_fingerprint(operation: str, fields: Mapping[str, Any]) -> str:
    """What makes two commands with one idempotency key "the same command": the operation and
    its normalised business fields (provider, amount, currency, E.164 number, order, user,
    original transaction)."""
    canonical = json.dumps(
        {
            "operation": operation,
            **{k: str(v.normalize()) if isinstance(v, Decimal) else v for k, v in fields.items()},
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- snapshots and events ---------------------------------------------------------------------


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
    amount_refunded: Decimal = Decimal(0)
    payment_type: str | None = None
    gross_amount: Decimal | None = None
    fee_amount: Decimal | None = None
    net_amount: Decimal | None = None
    # A payment whose outcome a provider could not confirm: reconcile it by hand.
    needs_reconciliation: bool = False
    created_at: datetime
    updated_at: datetime


class Event(_Wire):
    """A lifecycle event, as published on ``kunpay.events``.

    ``sequence`` increases per transaction; ``event_id`` identifies the event across
    redeliveries (delivery is at-least-once: dedupe on it). ``transaction`` is None only for a
    command-level rejection (an idempotency key reused with different content), which names the
    rejected ``command_id`` and never touches the existing transaction. Refund events carry the
    refunded payment as ``original_transaction`` and the provider's ``provider_refund_id``; a
    ``payment.duplicate_detected`` carries the other completed attempt as
    ``original_transaction``.
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


# -- requests on kunpay.rpc -------------------------------------------------------------------


class _Request(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION


class GetRequest(_Request):
    method: Literal["get"] = "get"
    transaction_id: uuid.UUID


class VerifyRequest(_Request):
    method: Literal["verify"] = "verify"
    transaction_id: uuid.UUID


class ListRequest(_Request):
    method: Literal["list"] = "list"
    order_id: Text | None = None
    user_id: Text | None = None
    status: Status | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class QuoteRequest(_Request):
    method: Literal["quote"] = "quote"
    payment_type: Text
    net_amount: WireAmount


class BalanceRequest(_Request):
    method: Literal["balance"] = "balance"
    provider: Text


class AccountHolderRequest(_Request):
    method: Literal["account_holder"] = "account_holder"
    provider: Text
    phone_number: Annotated[str, StringConstraints(max_length=32)]


RpcRequest = Annotated[
    GetRequest | VerifyRequest | ListRequest | QuoteRequest | BalanceRequest | AccountHolderRequest,
    Field(discriminator="method"),
]
RPC_REQUESTS: TypeAdapter[
    GetRequest | VerifyRequest | ListRequest | QuoteRequest | BalanceRequest | AccountHolderRequest
] = TypeAdapter(RpcRequest)


class Quote(_Wire):
    """What to charge so that the merchant nets ``net_amount`` after fees."""

    payment_type: str
    currency: str
    net_amount: Decimal
    gross_amount: Decimal
    fee_amount: Decimal
    provider_fee: Decimal
    platform_fee: Decimal


class BalanceInfo(_Wire):
    provider: str
    backend: str
    amount: Decimal
    currency: str


class AccountHolderInfo(_Wire):
    provider: str
    backend: str
    phone_number: str
    # None when the provider cannot tell (it only knows the operator).
    active: bool | None
    operator: str | None = None
    name: str | None = None


class RpcReply(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    ok: bool
    error_code: str | None = None
    error: str | None = None
    transaction: TransactionSnapshot | None = None
    final_event: Event | None = None
    transactions: list[TransactionSnapshot] | None = None
    quote: Quote | None = None
    balance: BalanceInfo | None = None
    account_holder: AccountHolderInfo | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)
