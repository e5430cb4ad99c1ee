import functools
from json import dumps, loads
from uuid import uuid4

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.migrations import operations as ops

from kunpay_sdk.contracts import Status, TransactionType
from kunpay_worker.storage.models import InboxOutcome, Initiation, OutboxKind


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="DeadLetter",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("message_id", fields.CharField(null=True, max_length=200)),
                ("source_queue", fields.CharField(null=True, max_length=255)),
                ("routing_key", fields.CharField(null=True, max_length=255)),
                ("reason", fields.CharField(max_length=100)),
                ("error", fields.TextField(null=True, unique=False)),
                (
                    "headers",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("body", fields.BinaryField()),
                ("attempts", fields.IntField(default=0)),
                (
                    "first_failed_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                (
                    "last_failed_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                (
                    "replayed_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={
                "table": "dead_letters",
                "app": "kunpay",
                "pk_attr": "id",
                "table_description": "A copy of each message that reached kunpay.dead-letter, for operators to browse/replay.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="InboxCommand",
            fields=[
                (
                    "command_id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("app", fields.CharField(max_length=64)),
                ("operation", fields.CharField(max_length=20)),
                ("transaction_id", fields.UUIDField(null=True, db_index=True)),
                (
                    "outcome",
                    fields.CharEnumField(
                        description="ACCEPTED: ACCEPTED\nDUPLICATE: DUPLICATE\nREJECTED: REJECTED",
                        enum_type=InboxOutcome,
                        max_length=10,
                    ),
                ),
                ("reason", fields.CharField(null=True, max_length=500)),
                ("received_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "inbox",
                "app": "kunpay",
                "pk_attr": "command_id",
                "table_description": "Every command id the worker has taken in, so a redelivery is recognised.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="OutboxMessage",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                (
                    "kind",
                    fields.CharEnumField(
                        description="EVENT: EVENT\nMESSAGE: MESSAGE",
                        enum_type=OutboxKind,
                        max_length=10,
                    ),
                ),
                ("exchange", fields.CharField(max_length=200)),
                ("routing_key", fields.CharField(max_length=255)),
                ("body", fields.TextField(unique=False)),
                (
                    "headers",
                    fields.JSONField(
                        default=dict,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("message_type", fields.CharField(max_length=60)),
                ("app", fields.CharField(null=True, max_length=64)),
                ("transaction_id", fields.UUIDField(null=True)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                (
                    "lease_until",
                    fields.DatetimeField(
                        null=True, db_index=True, auto_now=False, auto_now_add=False
                    ),
                ),
                ("claim", fields.CharField(null=True, db_index=True, max_length=36)),
                ("attempts", fields.IntField(default=0)),
            ],
            options={
                "table": "outbox",
                "app": "kunpay",
                "pk_attr": "id",
                "table_description": "Messages committed with a state change, published by the relay after commit.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="PaymentType",
            fields=[
                (
                    "id",
                    fields.IntField(generated=True, primary_key=True, unique=True, db_index=True),
                ),
                ("name", fields.CharField(unique=True, max_length=100)),
                ("short_name", fields.CharField(unique=True, max_length=40)),
                ("payment_class", fields.CharField(max_length=40)),
                ("provider", fields.CharField(max_length=40)),
                ("is_active", fields.BooleanField(default=True)),
                (
                    "fixed_provider_fee",
                    fields.DecimalField(default=0, max_digits=18, decimal_places=4),
                ),
                (
                    "percentage_provider_fee",
                    fields.DecimalField(default=0, max_digits=7, decimal_places=4),
                ),
                (
                    "fixed_platform_fee",
                    fields.DecimalField(default=0, max_digits=18, decimal_places=4),
                ),
                (
                    "percentage_platform_fee",
                    fields.DecimalField(default=0, max_digits=7, decimal_places=4),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "payment_types",
                "app": "kunpay",
                "pk_attr": "id",
                "table_description": "A priced way to pay: fees applied by quote() and stored on the transaction.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ProviderAttempt",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("transaction_id", fields.UUIDField(null=True, db_index=True)),
                ("backend", fields.CharField(max_length=40)),
                ("operation", fields.CharField(max_length=40)),
                ("method", fields.CharField(max_length=10)),
                ("url", fields.CharField(max_length=500)),
                (
                    "request_body",
                    fields.JSONField(
                        null=True,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("response_status", fields.IntField(null=True)),
                ("response_body", fields.TextField(null=True, unique=False)),
                ("error", fields.CharField(null=True, max_length=500)),
                ("duration_ms", fields.IntField()),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "provider_attempts",
                "app": "kunpay",
                "pk_attr": "id",
                "table_description": "Every HTTP exchange with a provider, secrets and full MSISDNs masked.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Transaction",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("app", fields.CharField(db_index=True, max_length=64)),
                (
                    "type",
                    fields.CharEnumField(
                        description="COLLECTION: collection\nDISBURSEMENT: disbursement\nREFUND: refund",
                        enum_type=TransactionType,
                        max_length=20,
                    ),
                ),
                ("operation", fields.CharField(max_length=20)),
                ("idempotency_key", fields.CharField(max_length=200)),
                ("fingerprint", fields.CharField(max_length=64)),
                ("command_id", fields.UUIDField()),
                ("correlation_id", fields.CharField(null=True, max_length=200)),
                ("provider", fields.CharField(max_length=200)),
                ("backend", fields.CharField(null=True, max_length=40)),
                ("amount", fields.DecimalField(max_digits=18, decimal_places=4)),
                ("currency", fields.CharField(max_length=8)),
                ("phone_number", fields.CharField(max_length=32)),
                ("order_id", fields.CharField(db_index=True, max_length=200)),
                ("user_id", fields.CharField(db_index=True, max_length=200)),
                (
                    "status",
                    fields.CharEnumField(
                        db_index=True,
                        description="PENDING: PENDING\nCOMPLETED: COMPLETED\nFAILED: FAILED\nREFUNDED: REFUNDED\nREFUND_FAILED: REFUND_FAILED\nREJECTED: REJECTED",
                        enum_type=Status,
                        max_length=20,
                    ),
                ),
                ("failure_reason", fields.CharField(null=True, max_length=500)),
                ("provider_reference", fields.CharField(null=True, unique=True, max_length=64)),
                ("provider_transaction_id", fields.CharField(null=True, max_length=128)),
                (
                    "initiation",
                    fields.CharEnumField(
                        description="NEW: NEW\nSENDING: SENDING\nSENT: SENT\nUNKNOWN: UNKNOWN\nREFUSED: REFUSED\nNOT_SENT: NOT_SENT",
                        enum_type=Initiation,
                        max_length=10,
                    ),
                ),
                (
                    "send_lease_until",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("send_attempts", fields.IntField(default=0)),
                ("poll_seq", fields.IntField(default=0)),
                ("poll_count", fields.IntField(default=0)),
                (
                    "next_poll_at",
                    fields.DatetimeField(
                        null=True, db_index=True, auto_now=False, auto_now_add=False
                    ),
                ),
                ("event_seq", fields.IntField(default=0)),
                (
                    "payment_type",
                    fields.ForeignKeyField(
                        "kunpay.PaymentType",
                        source_field="payment_type_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name=False,
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                ("gross_amount", fields.DecimalField(null=True, max_digits=18, decimal_places=4)),
                ("fee_amount", fields.DecimalField(null=True, max_digits=18, decimal_places=4)),
                (
                    "original",
                    fields.ForeignKeyField(
                        "kunpay.Transaction",
                        source_field="original_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name=False,
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "amount_refunded",
                    fields.DecimalField(default=0, max_digits=18, decimal_places=4),
                ),
                (
                    "amount_reserved",
                    fields.DecimalField(default=0, max_digits=18, decimal_places=4),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("updated_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "transactions",
                "app": "kunpay",
                "pk_attr": "id",
                "table_description": "One money movement, its id derived from (app, operation, idempotency key).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Refund",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                (
                    "transaction",
                    fields.OneToOneField(
                        "kunpay.Transaction",
                        source_field="transaction_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="refund",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "original",
                    fields.ForeignKeyField(
                        "kunpay.Transaction",
                        source_field="original_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="refunds",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                ("amount", fields.DecimalField(max_digits=18, decimal_places=4)),
                ("provider_refund_id", fields.CharField(null=True, unique=True, max_length=128)),
                ("manual_refund_id", fields.CharField(null=True, unique=True, max_length=128)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "refunds",
                "app": "kunpay",
                "pk_attr": "id",
                "table_description": "The link from a refund to the payment it refunds (one of the two refund ids once known).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="TransactionStatus",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                (
                    "transaction",
                    fields.ForeignKeyField(
                        "kunpay.Transaction",
                        source_field="transaction_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="statuses",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "status",
                    fields.CharEnumField(
                        description="PENDING: PENDING\nCOMPLETED: COMPLETED\nFAILED: FAILED\nREFUNDED: REFUNDED\nREFUND_FAILED: REFUND_FAILED\nREJECTED: REJECTED",
                        enum_type=Status,
                        max_length=20,
                    ),
                ),
                ("reason", fields.CharField(null=True, max_length=500)),
                ("actor", fields.CharField(default="worker", max_length=200)),
                ("event_id", fields.UUIDField(null=True)),
                ("event_type", fields.CharField(null=True, max_length=40)),
                ("sequence", fields.IntField(null=True)),
                (
                    "event",
                    fields.JSONField(
                        null=True,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "transaction_statuses",
                "app": "kunpay",
                "pk_attr": "id",
                "table_description": "Append-only status log: every row but a same-status reason change has its event.",
            },
            bases=["Model"],
        ),
    ]
