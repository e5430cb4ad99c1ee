"""Taking a money command in (DESIGN.md §5 steps 1-2), one DB transaction per command.

Every command lands exactly once per command id (the inbox). A command whose idempotency key
already made a transaction is a duplicate when its content matches (nothing new is created) and a
conflict otherwise (rejected by command id, the transaction untouched). A new transaction starts
PENDING with a fresh uuid4 provider reference, its status row and ``payment.initiated`` in the
outbox (the send schedules its first check; a row that must wait gets it here), born with its
send claimed where the engine says that is safe (Engine.intake_claim) — or REJECTED with
``payment.rejected`` when a rule refused it.

The rules that depend on other rows run inside the same transaction, with those rows locked:
a refund reserves its amount on the original (racing refunds can never exceed what was paid); a
retry checks that no attempt of the payment is PENDING or COMPLETED.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from kunpay_sdk.contracts import (
    CollectCommand,
    DisburseCommand,
    Event,
    EventType,
    RefundCommand,
    RetryCommand,
    Status,
    TransactionType,
    command_fingerprint,
)
from kunpay_worker.domain.refunds import RefundRefused, refund_amount
from kunpay_worker.storage import db
from kunpay_worker.storage.models import InboxCommand, InboxOutcome, Initiation, Refund, Transaction
from kunpay_worker.storage.repository import (
    PollPlan,
    event_outbox_row,
    lock,
    schedule_first_check,
    set_status,
    utcnow,
)

__all__ = [
    "ClaimAtIntake",
    "Intake",
    "NewTransaction",
    "RefundSupport",
    "conflict_reason",
    "take_in_payment",
    "take_in_refund",
    "take_in_retry",
]

AnyCommand = CollectCommand | DisburseCommand | RefundCommand | RetryCommand


@dataclass(frozen=True, slots=True)
class Intake:
    outcome: InboxOutcome | None  # None: this command id was seen before (a redelivery)
    transaction: Transaction | None
    # The intake created the row with the send already claimed (see ClaimAtIntake): this
    # delivery sends next, under that claim.
    claimed: bool = False


@dataclass
class NewTransaction:
    """The row a command creates, as worked out by its handler (and its guard)."""

    type: TransactionType
    provider: str
    backend: str | None
    amount: Decimal
    currency: str
    phone_number: str
    order_id: str
    user_id: str
    rejection: str | None = None
    original_id: uuid.UUID | None = None
    attempt_root: uuid.UUID | None = None
    payment_type_id: int | None = None
    gross_amount: Decimal | None = None
    fee_amount: Decimal | None = None
    net_amount: Decimal | None = None
    send_after: datetime | None = None
    # Work done once the row exists (a refund's link row).
    after_create: list[Callable[[Transaction], Awaitable[None]]] = field(default_factory=list)


Build = Callable[[datetime], Awaitable[NewTransaction]]

# Given a new row's backend: the send lease (seconds) to claim in the intake's own DB
# transaction, or None to claim when sending (Engine.intake_claim decides).
ClaimAtIntake = Callable[[str | None], float | None]


async def _take_in(
    command: AnyCommand,
    app: str,
    fingerprint: str,
    build: Build,
    plan: PollPlan,
    claim: ClaimAtIntake | None,
) -> Intake:
    # Most commands are new: the first try inserts without looking, and the transaction's
    # key (the id, derived from the idempotency key) refuses a redelivery or a duplicate.
    # The tries after it look first.
    for attempt in range(4):
        try:
            return await _take_in_once(
                command, app, fingerprint, build, plan, claim, look_first=attempt > 0
            )
        except IntegrityError:
            # This command or transaction exists (a concurrent delivery may just have
            # inserted it): look again.
            if attempt == 3:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _take_in_once(
    command: AnyCommand,
    app: str,
    fingerprint: str,
    build: Build,
    plan: PollPlan,
    claim: ClaimAtIntake | None,
    *,
    look_first: bool,
) -> Intake:
    now = utcnow()
    async with in_transaction():
        if look_first:
            seen = await InboxCommand.get_or_none(command_id=command.command_id)
            if seen is not None:
                tx = (
                    await Transaction.get_or_none(id=seen.transaction_id)
                    if seen.outcome is not InboxOutcome.REJECTED
                    else None
                )
                return Intake(None, tx)

            existing = await lock(command.transaction_id)
            if existing is not None:
                if existing.fingerprint == fingerprint:
                    await _inbox(command, app, existing.id, InboxOutcome.DUPLICATE, None, now)
                    return Intake(InboxOutcome.DUPLICATE, existing)
                await _reject_conflict(command, app, existing, now)
                return Intake(InboxOutcome.REJECTED, None)

        new = await build(now)
        rejected = new.rejection is not None
        # Unless it must wait, this delivery sends next (Engine.after_intake), and the send
        # schedules the first check. Until then the row is due now with nothing in flight: if
        # the delivery goes no further, the command comes again (it is retried until handled)
        # and makes sure a check follows (Engine._ensure_check), and the janitor's sweep would
        # find the row overdue. A row that waits gets its first check here.
        sends_now = not rejected and new.send_after is None
        # Where it is safe (Engine.intake_claim), the row is born with the send claimed, and
        # this commit is the claim's: a delivery that goes no further leaves it SENDING, and
        # its check asks the provider once the lease has run out, as after a crash mid-send.
        lease = claim(new.backend) if claim is not None and sends_now else None
        tx = Transaction(
            id=command.transaction_id,
            app=app,
            type=new.type,
            operation=command.operation,
            idempotency_key=command.idempotency_key,
            fingerprint=fingerprint,
            command_id=command.command_id,
            correlation_id=command.correlation_id,
            provider=new.provider,
            backend=new.backend,
            amount=new.amount,
            currency=new.currency,
            phone_number=new.phone_number,
            order_id=new.order_id,
            user_id=new.user_id,
            status=Status.REJECTED if rejected else Status.PENDING,
            failure_reason=new.rejection,
            provider_reference=None if rejected else str(uuid.uuid4()),
            initiation=(
                Initiation.NOT_SENT
                if rejected
                else Initiation.NEW
                if lease is None
                else Initiation.SENDING
            ),
            send_attempts=0 if lease is None else 1,
            send_lease_until=None if lease is None else now + timedelta(seconds=lease),
            original_id=new.original_id,
            attempt_root=new.attempt_root,
            payment_type_id=new.payment_type_id,
            gross_amount=new.gross_amount,
            fee_amount=new.fee_amount,
            net_amount=new.net_amount,
            send_after=new.send_after,
            next_poll_at=now if sends_now else None,
            event_seq=1,  # the sequence of the event set_status writes next
            created_at=now,
            updated_at=now,
        )
        await db.add(tx)
        await _inbox(command, app, tx.id, InboxOutcome.ACCEPTED, None, now)
        if not rejected:
            for step in new.after_create:
                await step(tx)
        await set_status(
            tx, tx.status, new.rejection, now, command_id=command.command_id, created=True
        )
        if new.send_after is not None and not rejected:
            first = max(plan.delays[0], (new.send_after - now).total_seconds())
            await schedule_first_check(tx, first, plan, now)
        return Intake(InboxOutcome.ACCEPTED, tx, claimed=lease is not None)


async def _inbox(
    command: AnyCommand,
    app: str,
    transaction_id: uuid.UUID,
    outcome: InboxOutcome,
    reason: str | None,
    now: datetime,
) -> None:
    await db.add(
        InboxCommand(
            command_id=command.command_id,
            app=app,
            operation=command.operation,
            transaction_id=transaction_id,
            outcome=outcome,
            reason=reason,
            received_at=now,
        )
    )


# Of an idempotency key quoted in a conflict's reason: quoted, a key of 200 non-printable
# characters is up to 2000 long (inbox.reason holds 500).
QUOTED_KEY_LENGTH = 300


def conflict_reason(idempotency_key: str, transaction_id: uuid.UUID) -> str:
    """Why a command reusing a key with other content is refused: the key quoted (cut if its
    quoted form is long) and the transaction it names."""
    quoted = repr(idempotency_key)
    if len(quoted) > QUOTED_KEY_LENGTH:
        quoted = quoted[: QUOTED_KEY_LENGTH - 1] + "…"
    return (
        f"IDEMPOTENCY_CONFLICT: key {quoted} was already used for transaction {transaction_id} "
        "with different content"
    )


async def _reject_conflict(
    command: AnyCommand, app: str, existing: Transaction, now: datetime
) -> None:
    reason = conflict_reason(command.idempotency_key, existing.id)
    await _inbox(command, app, existing.id, InboxOutcome.REJECTED, reason, now)
    event = Event(
        event_id=uuid.uuid4(),
        type=EventType.REJECTED,
        occurred_at=now,
        sequence=1,
        correlation_id=command.correlation_id,
        command_id=command.command_id,
        transaction=None,
        reason=reason,
    )
    await db.add(event_outbox_row(event, app, now))


# -- the four commands ------------------------------------------------------------------------


def raw_fingerprint(command: CollectCommand | DisburseCommand) -> str:
    """Fingerprint of a payment command that failed validation (its fields as given)."""
    return command_fingerprint(
        command.operation,
        {
            "provider": command.provider,
            "amount": str(command.amount),
            "currency": command.currency,
            "phone_number": command.phone_number,
            "order_id": command.order_id,
            "user_id": command.user_id,
            "invalid": True,
        },
    )


async def take_in_payment(
    command: CollectCommand | DisburseCommand,
    *,
    app: str,
    new: NewTransaction,
    fingerprint: str,
    plan: PollPlan,
    claim: ClaimAtIntake | None = None,
) -> Intake:
    """A collection or payout, worked out by the handler (validation, capability, fees)."""

    async def build(_now: datetime) -> NewTransaction:
        return new

    return await _take_in(command, app, fingerprint, build, plan, claim)


@dataclass(frozen=True, slots=True)
class RefundSupport:
    """What the worker's backends can do for a refund of a payment made through ``backend``."""

    rejection: Callable[[str | None], str | None]  # why this backend cannot refund, or None
    partial: Callable[[str | None], bool]
    # Why this app may not refund that much (its limit), or None.
    amount_refusal: Callable[[Decimal], str | None] = lambda _amount: None


async def take_in_refund(
    command: RefundCommand,
    *,
    app: str,
    support: RefundSupport,
    plan: PollPlan,
    claim: ClaimAtIntake | None = None,
) -> Intake:
    fingerprint = command_fingerprint(
        command.operation,
        {
            "original": str(command.original_transaction_id),
            "amount": "all" if command.amount is None else command.amount,
        },
    )

    async def build(_now: datetime) -> NewTransaction:
        original = await lock(command.original_transaction_id)
        if original is None or original.app != app:
            return NewTransaction(
                type=TransactionType.REFUND,
                provider="",
                backend=None,
                amount=command.amount or Decimal(0),
                currency="",
                phone_number="",
                order_id="",
                user_id="",
                rejection=f"NOT_FOUND: no transaction {command.original_transaction_id} to refund",
            )
        new = NewTransaction(
            type=TransactionType.REFUND,
            provider=original.provider,
            backend=original.backend,
            amount=command.amount or Decimal(0),
            currency=original.currency,
            phone_number=original.phone_number,
            order_id=original.order_id,
            user_id=original.user_id,
            original_id=original.id,
        )
        new.rejection = support.rejection(original.backend)
        if new.rejection is not None:
            return new
        try:
            new.amount = refund_amount(
                requested=command.amount,
                kind=original.type,
                status=original.status,
                amount=original.amount,
                refunded=original.amount_refunded,
                reserved=original.amount_reserved,
                currency=original.currency,
                partial_supported=support.partial(original.backend),
            )
        except RefundRefused as exc:
            new.rejection = f"NOT_REFUNDABLE: {exc}"
            return new
        new.rejection = support.amount_refusal(new.amount)
        if new.rejection is not None:
            return new
        # Reserved under the original's lock, in the transaction that creates the refund.
        await Transaction.filter(id=original.id).update(
            amount_reserved=original.amount_reserved + new.amount
        )

        async def link(tx: Transaction) -> None:
            await db.add(Refund(transaction_id=tx.id, original_id=original.id, amount=tx.amount))

        new.after_create.append(link)
        return new

    return await _take_in(command, app, fingerprint, build, plan, claim)


async def take_in_retry(
    command: RetryCommand,
    *,
    app: str,
    rejection: Callable[[Transaction], str | None],
    send_wait: Callable[[Transaction], float],
    plan: PollPlan,
    claim: ClaimAtIntake | None = None,
) -> Intake:
    """``rejection``: what this worker cannot do for the original's backend. ``send_wait``:
    seconds to wait after the original's failure before sending (Orange)."""
    fingerprint = command_fingerprint(
        command.operation, {"original": str(command.original_transaction_id)}
    )

    async def build(now: datetime) -> NewTransaction:
        # Lock the chain's first attempt, not the one retried: every retry of one payment then
        # serialises on one row, and a late check (attempt first, then the chain's first) cannot
        # deadlock with us.
        original = await Transaction.get_or_none(id=command.original_transaction_id)
        if original is not None:
            await lock(original.attempt_root or original.id)
            original = await Transaction.get_or_none(id=original.id)
        if original is None or original.app != app:
            return NewTransaction(
                type=TransactionType.COLLECTION,
                provider="",
                backend=None,
                amount=Decimal(0),
                currency="",
                phone_number="",
                order_id="",
                user_id="",
                rejection=f"NOT_FOUND: no transaction {command.original_transaction_id} to retry",
            )
        root = original.attempt_root or original.id
        new = NewTransaction(
            type=TransactionType.COLLECTION,
            provider=original.provider,
            backend=original.backend,
            amount=original.amount,
            currency=original.currency,
            phone_number=original.phone_number,
            order_id=original.order_id,
            user_id=original.user_id,
            original_id=original.id,
            attempt_root=root,
            payment_type_id=original.payment_type_id,  # type: ignore[attr-defined]
            gross_amount=original.gross_amount,
            fee_amount=original.fee_amount,
            net_amount=original.net_amount,
        )
        if original.type is not TransactionType.COLLECTION:
            new.rejection = f"NOT_RETRYABLE: only collections are retried, not a {original.type}"
        elif original.status is not Status.FAILED:
            new.rejection = f"NOT_RETRYABLE: {original.id} is {original.status}, not FAILED"
        else:
            chain = Transaction.filter(Q(id=root) | Q(attempt_root=root))
            busy = await chain.filter(
                status__in=[
                    Status.PENDING,
                    Status.COMPLETED,
                    Status.REFUNDED,
                    Status.REFUND_FAILED,
                ]
            ).first()
            # An attempt whose outcome the provider never confirmed may have charged the payer.
            unknown = await chain.filter(needs_reconciliation=True).first()
            if busy is not None:
                new.rejection = f"NOT_RETRYABLE: attempt {busy.id} of this payment is {busy.status}"
            elif unknown is not None:
                new.rejection = (
                    f"NOT_RETRYABLE: the outcome of attempt {unknown.id} is unknown; reconcile "
                    "it with the provider first"
                )
            else:
                new.rejection = rejection(original)
        if new.rejection is None:
            wait = send_wait(original) - (now - original.updated_at).total_seconds()
            if wait > 0:
                new.send_after = now + timedelta(seconds=wait)
        return new

    return await _take_in(command, app, fingerprint, build, plan, claim)


def dump(command: AnyCommand) -> str:
    return json.dumps(command.model_dump(mode="json"))
