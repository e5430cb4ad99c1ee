"""The database tables (DESIGN.md §6). Schema changes go through a migration in ./migrations.

Money columns are decimal(18, 4): exact, and wide enough for every currency kunpay moves.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.models import Model

from kunpay_sdk.contracts import Status, TransactionType
from kunpay_worker.domain.fees import FeeSchedule


class Initiation(StrEnum):
    """How far sending the money request to the provider got (DESIGN.md §5 step 3-4)."""

    NEW = "NEW"  # nothing sent yet
    SENDING = "SENDING"  # claimed by a worker until send_lease_until; the request may be in flight
    SENT = "SENT"  # the provider has it (accepted, or answered "duplicate")
    UNKNOWN = "UNKNOWN"  # sent, no usable answer (timeout, 5xx): look the reference up first
    REFUSED = "REFUSED"  # the provider refused it; the transaction FAILED
    NOT_SENT = "NOT_SENT"  # rejected before sending; never will be


class InboxOutcome(StrEnum):
    ACCEPTED = "ACCEPTED"  # created the transaction
    DUPLICATE = "DUPLICATE"  # same key and content as an existing transaction
    REJECTED = "REJECTED"  # rejected by command id (idempotency conflict)


class OutboxKind(StrEnum):
    EVENT = "EVENT"  # to kunpay.events and kunpay.outcomes
    MESSAGE = "MESSAGE"  # to exchange/routing_key as stored (polls, delayed commands)


class PaymentType(Model):
    """A priced way to pay: fees applied by quote() and stored on the transaction."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100, unique=True)
    short_name = fields.CharField(max_length=40, unique=True)
    payment_class = fields.CharField(max_length=40)
    provider = fields.CharField(max_length=40)
    currency = fields.CharField(max_length=8, default="XAF", db_default="XAF")
    is_active = fields.BooleanField(default=True)
    fixed_provider_fee = fields.DecimalField(max_digits=18, decimal_places=4, default=0)
    percentage_provider_fee = fields.DecimalField(max_digits=7, decimal_places=4, default=0)
    fixed_platform_fee = fields.DecimalField(max_digits=18, decimal_places=4, default=0)
    percentage_platform_fee = fields.DecimalField(max_digits=7, decimal_places=4, default=0)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "payment_types"

    def fee_schedule(self) -> FeeSchedule:
        """Its fees; raises FeeError when they cannot leave the merchant anything."""
        return FeeSchedule(
            fixed_provider=self.fixed_provider_fee,
            percentage_provider=self.percentage_provider_fee,
            fixed_platform=self.fixed_platform_fee,
            percentage_platform=self.percentage_platform_fee,
        )


class Transaction(Model):
    """One money movement, its id derived from (app, operation, idempotency key)."""

    id = fields.UUIDField(primary_key=True)
    app = fields.CharField(max_length=64, db_index=True)
    type = fields.CharEnumField(TransactionType, max_length=20)
    operation = fields.CharField(max_length=20)
    idempotency_key = fields.CharField(max_length=200)
    fingerprint = fields.CharField(max_length=64)
    command_id = fields.UUIDField()
    correlation_id = fields.CharField(max_length=200, null=True)
    provider = fields.CharField(max_length=200)
    backend = fields.CharField(max_length=40, null=True)
    amount = fields.DecimalField(max_digits=18, decimal_places=4)
    currency = fields.CharField(max_length=8)
    phone_number = fields.CharField(max_length=32)
    order_id = fields.CharField(max_length=200, db_index=True)
    user_id = fields.CharField(max_length=200, db_index=True)
    status = fields.CharEnumField(Status, max_length=20, db_index=True)
    failure_reason = fields.CharField(max_length=500, null=True)
    # Sending: a fresh uuid4 per transaction, stored before the provider is called.
    provider_reference = fields.CharField(max_length=64, null=True, unique=True)
    provider_transaction_id = fields.CharField(max_length=128, null=True)
    # An id the provider assigned (Orange payToken, Flutterwave charge or refund id).
    provider_handle = fields.CharField(max_length=128, null=True)
    # The provider could not confirm the outcome (a non-deduplicating send with an unknown
    # answer that never showed up): an operator must reconcile it.
    needs_reconciliation = fields.BooleanField(default=False, db_default=False)
    initiation = fields.CharEnumField(Initiation, max_length=10)
    send_lease_until = fields.DatetimeField(null=True)
    send_attempts = fields.IntField(default=0)
    # Do not send before this (a retry of a failed Orange collection waits a little).
    send_after = fields.DatetimeField(null=True)
    # Polling: a poll message carrying another seq than poll_seq is stale and dropped.
    poll_seq = fields.IntField(default=0)
    poll_count = fields.IntField(default=0)
    # Checks of a FAILED collection for a provider's late success.
    late_checks = fields.IntField(default=0, db_default=0)
    next_poll_at = fields.DatetimeField(null=True, db_index=True)
    # When a provider callback last triggered a check (callbacks within the coalescing window
    # after it trigger nothing more).
    hint_at = fields.DatetimeField(null=True)
    # Still PENDING after the janitor's max age: no more checks until an operator resolves it.
    stale = fields.BooleanField(default=False, db_default=False, db_index=True)
    # Events: the last sequence number used for this transaction's events.
    event_seq = fields.IntField(default=0)
    # Fees (payment types) and refunds.
    payment_type: fields.ForeignKeyNullableRelation[PaymentType] = fields.ForeignKeyField(
        "kunpay.PaymentType", null=True, on_delete=fields.RESTRICT, related_name=False
    )
    gross_amount = fields.DecimalField(max_digits=18, decimal_places=4, null=True)
    fee_amount = fields.DecimalField(max_digits=18, decimal_places=4, null=True)
    net_amount = fields.DecimalField(max_digits=18, decimal_places=4, null=True)
    original: fields.ForeignKeyNullableRelation[Transaction] = fields.ForeignKeyField(
        "kunpay.Transaction", null=True, on_delete=fields.RESTRICT, related_name=False
    )
    # Retries: the first attempt of the chain (None on the first attempt itself).
    attempt_root = fields.UUIDField(null=True, db_index=True)
    amount_refunded = fields.DecimalField(max_digits=18, decimal_places=4, default=0)
    amount_reserved = fields.DecimalField(max_digits=18, decimal_places=4, default=0)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "transactions"
        # The janitor's sweep (repository.overdue): PENDING, not stale, next_poll_at overdue,
        # oldest first — an index range scan instead of reading every PENDING row.
        indexes = (("status", "stale", "next_poll_at"),)


class TransactionStatus(Model):
    """Append-only status log: every row but a same-status reason change has its event."""

    id = fields.BigIntField(primary_key=True)
    transaction: fields.ForeignKeyRelation[Transaction] = fields.ForeignKeyField(
        "kunpay.Transaction", on_delete=fields.RESTRICT, related_name="statuses"
    )
    status = fields.CharEnumField(Status, max_length=20)
    reason = fields.CharField(max_length=500, null=True)
    actor = fields.CharField(max_length=200, default="worker")
    event_id = fields.UUIDField(null=True)
    event_type = fields.CharField(max_length=40, null=True)
    sequence = fields.IntField(null=True)
    event: Any = fields.JSONField(null=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "transaction_statuses"


class Refund(Model):
    """The link from a refund to the payment it refunds (one of the two refund ids once known)."""

    id = fields.BigIntField(primary_key=True)
    transaction: fields.OneToOneRelation[Transaction] = fields.OneToOneField(
        "kunpay.Transaction", on_delete=fields.RESTRICT, related_name="refund"
    )
    original: fields.ForeignKeyRelation[Transaction] = fields.ForeignKeyField(
        "kunpay.Transaction", on_delete=fields.RESTRICT, related_name="refunds"
    )
    amount = fields.DecimalField(max_digits=18, decimal_places=4)
    provider_refund_id = fields.CharField(max_length=128, null=True, unique=True)
    manual_refund_id = fields.CharField(max_length=128, null=True, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "refunds"


class ProviderAttempt(Model):
    """Every HTTP exchange with a provider, secrets and full MSISDNs masked."""

    id = fields.BigIntField(primary_key=True)
    transaction_id = fields.UUIDField(null=True, db_index=True)
    backend = fields.CharField(max_length=40)
    operation = fields.CharField(max_length=40)
    method = fields.CharField(max_length=10)
    url = fields.CharField(max_length=500)
    request_body: Any = fields.JSONField(null=True)
    response_status = fields.IntField(null=True)
    response_body = fields.TextField(null=True)
    error = fields.CharField(max_length=500, null=True)
    duration_ms = fields.IntField()
    created_at = fields.DatetimeField()

    class Meta:
        table = "provider_attempts"


class OutboxMessage(Model):
    """Messages committed with a state change, published by the relay after commit."""

    id = fields.BigIntField(primary_key=True)
    kind = fields.CharEnumField(OutboxKind, max_length=10)
    exchange = fields.CharField(max_length=200)
    routing_key = fields.CharField(max_length=255)
    body = fields.TextField()
    headers: Any = fields.JSONField(default=dict)
    message_type = fields.CharField(max_length=60)
    app = fields.CharField(max_length=64, null=True)
    transaction_id = fields.UUIDField(null=True)
    created_at = fields.DatetimeField()
    lease_until = fields.DatetimeField(null=True, db_index=True)
    claim = fields.CharField(max_length=36, null=True, db_index=True)
    attempts = fields.IntField(default=0)

    class Meta:
        table = "outbox"


class InboxCommand(Model):
    """Every command id the worker has taken in, so a redelivery is recognised."""

    command_id = fields.UUIDField(primary_key=True)
    app = fields.CharField(max_length=64)
    operation = fields.CharField(max_length=20)
    transaction_id = fields.UUIDField(null=True, db_index=True)
    outcome = fields.CharEnumField(InboxOutcome, max_length=10)
    reason = fields.CharField(max_length=500, null=True)
    received_at = fields.DatetimeField()

    class Meta:
        table = "inbox"


class Lease(Model):
    """A named lease that one worker holds at a time (the sweep of the janitor)."""

    name = fields.CharField(max_length=100, primary_key=True)
    holder = fields.CharField(max_length=64)
    expires_at = fields.DatetimeField()

    class Meta:
        table = "leases"


class DeadLetter(Model):
    """A copy of each message that reached kunpay.dead-letter, for operators to browse/replay."""

    id = fields.BigIntField(primary_key=True)
    # sha256 of the dead-lettered message (body and headers): a copy stored twice is one row.
    fingerprint = fields.CharField(max_length=64, unique=True, null=True)
    message_id = fields.CharField(max_length=200, null=True)
    source_queue = fields.CharField(max_length=255, null=True)
    # Where it was published to, and where a replay sends it again.
    exchange = fields.CharField(max_length=255, null=True)
    routing_key = fields.CharField(max_length=255, null=True)
    app = fields.CharField(max_length=64, null=True, db_index=True)
    # The AMQP properties to publish it with again (content type, ids, type).
    properties: Any = fields.JSONField(default=dict)
    reason = fields.CharField(max_length=100, db_index=True)
    error = fields.TextField(null=True)
    headers: Any = fields.JSONField(default=dict)
    body = fields.BinaryField()
    attempts = fields.IntField(default=0)
    first_failed_at = fields.DatetimeField(null=True)
    last_failed_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField()
    replayed_at = fields.DatetimeField(null=True, db_index=True)

    class Meta:
        table = "dead_letters"
