"""The worker's database operations. Each public coroutine is one short DB transaction.

No network await happens inside a transaction (SQLite has one connection and a transaction holds
its only lock; a PostgreSQL transaction holds row locks). Transitions are compare-and-set: the row
is locked (``SELECT ... FOR UPDATE`` on PostgreSQL), its state checked, then updated with the
expected state in the ``WHERE`` clause and the row count checked.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F, Q
from tortoise.transactions import in_transaction

from kunpay_sdk import topology
from kunpay_sdk.contracts import (
    FINAL_EVENT_TYPES,
    CollectCommand,
    Event,
    EventType,
    Status,
    TransactionSnapshot,
    TransactionType,
    ValidatedCollect,
    command_fingerprint,
)
from kunpay_worker.domain.lifecycle import plan_transition
from kunpay_worker.domain.schedule import next_poll_delay, tier_for, to_ms
from kunpay_worker.providers.base import AttemptRecord
from kunpay_worker.storage.models import (
    InboxCommand,
    InboxOutcome,
    Initiation,
    OutboxKind,
    OutboxMessage,
    ProviderAttempt,
    Transaction,
    TransactionStatus,
)

log = structlog.get_logger("kunpay.storage")


def utcnow() -> datetime:
    return datetime.now(UTC)


class LostRace(Exception):
    """The row was not in the expected state: another delivery moved it first."""


# -- snapshots and events ---------------------------------------------------------------------


def snapshot(tx: Transaction) -> TransactionSnapshot:
    return TransactionSnapshot(
        id=tx.id,
        type=tx.type,
        app=tx.app,
        provider=tx.provider,
        backend=tx.backend,
        amount=tx.amount,
        currency=tx.currency,
        phone_number=tx.phone_number,
        status=tx.status,
        order_id=tx.order_id,
        user_id=tx.user_id,
        idempotency_key=tx.idempotency_key,
        provider_reference=tx.provider_reference,
        provider_transaction_id=tx.provider_transaction_id,
        failure_reason=tx.failure_reason,
        original_transaction_id=tx.original_id,  # type: ignore[attr-defined]
        created_at=tx.created_at,
        updated_at=tx.updated_at,
    )


def _event_outbox_row(event: Event, app: str, now: datetime) -> OutboxMessage:
    return OutboxMessage(
        kind=OutboxKind.EVENT,
        exchange=topology.EVENTS_EXCHANGE,
        routing_key=str(event.type),
        body=event.model_dump_json(),
        headers={
            "schema_version": event.schema_version,
            "event_id": str(event.event_id),
            "event_type": str(event.type),
            "sequence": event.sequence,
            "transaction_id": str(event.transaction.id) if event.transaction else "",
            "command_id": str(event.command_id) if event.command_id else "",
        },
        message_type=str(event.type),
        app=app,
        transaction_id=event.transaction.id if event.transaction else None,
        created_at=now,
    )


async def _set_status(
    tx: Transaction,
    new: Status,
    reason: str | None,
    now: datetime,
    *,
    actor: str = "worker",
    command_id: uuid.UUID | None = None,
    **changes: Any,
) -> Event | None:
    """Inside a DB transaction: compare-and-set ``tx.status`` to ``new``, append the status row,
    and put the event in the outbox. Returns the event (None for a same-status reason update)."""
    current = tx.status if tx.event_seq else None  # event_seq 0: the row is being created
    plan = plan_transition(tx.type, current, new)
    if plan.current == plan.new and reason == tx.failure_reason:
        return None
    if current is not None:
        values = {"status": new, "failure_reason": reason, "updated_at": now, **changes}
        if plan.event is not None:
            values["event_seq"] = F("event_seq") + 1
        updated = await Transaction.filter(id=tx.id, status=current).update(**values)
        if updated != 1:
            raise LostRace(f"{tx.id} is no longer {current}")
        for name, value in values.items():
            if name != "event_seq":
                setattr(tx, name, value)
    event: Event | None = None
    if plan.event is not None:
        tx.event_seq += 1
        event = Event(
            event_id=uuid.uuid4(),
            type=plan.event,
            occurred_at=now,
            sequence=tx.event_seq,
            correlation_id=tx.correlation_id,
            command_id=command_id,
            transaction=snapshot(tx),
            reason=reason,
            late=plan.late,
        )
        await _event_outbox_row(event, tx.app, now).save()
    await TransactionStatus.create(
        transaction_id=tx.id,
        status=new,
        reason=reason,
        actor=actor,
        event_id=event.event_id if event else None,
        event_type=str(event.type) if event else None,
        sequence=event.sequence if event else None,
        event=event.model_dump(mode="json") if event else None,
        created_at=now,
    )
    return event


# -- intake (DESIGN.md §5 steps 1-2) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intake:
    outcome: InboxOutcome | None  # None: this command id was seen before (a redelivery)
    transaction: Transaction | None


def raw_fingerprint(command: CollectCommand) -> str:
    """Fingerprint of a command that failed validation (its fields as given)."""
    canonical = json.dumps(
        {
            "operation": command.operation,
            "provider": command.provider,
            "amount": str(command.amount),
            "currency": command.currency,
            "phone_number": command.phone_number,
            "order_id": command.order_id,
            "user_id": command.user_id,
            "invalid": True,
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def take_in_collect(
    command: CollectCommand,
    *,
    app: str,
    fields: ValidatedCollect | None,
    rejection: str | None,
    backend: str | None,
    plan: PollPlan,
) -> Intake:
    """Record a collect command: a new PENDING (or REJECTED) transaction, a duplicate of an
    existing one, or an idempotency conflict rejected by command id. Idempotent per command id.

    A new PENDING transaction also gets its first check scheduled, so it moves on even if this
    delivery goes no further (the send supersedes that check)."""
    fingerprint = (
        command_fingerprint(command.operation, fields) if fields else raw_fingerprint(command)
    )
    args = (command, app, fields, rejection, backend, fingerprint, plan)
    for _ in range(2):
        try:
            return await _take_in_collect(*args)
        except IntegrityError:
            # A concurrent delivery inserted the same command or transaction: look again.
            continue
    return await _take_in_collect(*args)


async def _take_in_collect(
    command: CollectCommand,
    app: str,
    fields: ValidatedCollect | None,
    rejection: str | None,
    backend: str | None,
    fingerprint: str,
    plan: PollPlan,
) -> Intake:
    now = utcnow()
    async with in_transaction():
        seen = await InboxCommand.get_or_none(command_id=command.command_id)
        if seen is not None:
            tx = (
                await Transaction.get_or_none(id=seen.transaction_id)
                if seen.outcome is not InboxOutcome.REJECTED
                else None
            )
            return Intake(None, tx)

        existing = await Transaction.select_for_update().get_or_none(id=command.transaction_id)
        if existing is not None:
            if existing.fingerprint == fingerprint:
                await InboxCommand.create(
                    command_id=command.command_id,
                    app=app,
                    operation=command.operation,
                    transaction_id=existing.id,
                    outcome=InboxOutcome.DUPLICATE,
                    received_at=now,
                )
                return Intake(InboxOutcome.DUPLICATE, existing)
            reason = (
                f"IDEMPOTENCY_CONFLICT: key {command.idempotency_key!r} was already used for "
                f"transaction {existing.id} with different content"
            )
            await InboxCommand.create(
                command_id=command.command_id,
                app=app,
                operation=command.operation,
                transaction_id=existing.id,
                outcome=InboxOutcome.REJECTED,
                reason=reason,
                received_at=now,
            )
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
            row = _event_outbox_row(event, app, now)
            row.headers["transaction_id"] = ""
            await row.save()
            return Intake(InboxOutcome.REJECTED, None)

        rejected = rejection is not None
        tx = await Transaction.create(
            id=command.transaction_id,
            app=app,
            type=TransactionType.COLLECTION,
            operation=command.operation,
            idempotency_key=command.idempotency_key,
            fingerprint=fingerprint,
            command_id=command.command_id,
            correlation_id=command.correlation_id,
            provider=command.provider,
            backend=backend,
            amount=fields.amount if fields else command.amount,
            currency=fields.currency if fields else command.currency,
            phone_number=fields.phone_number if fields else command.phone_number,
            order_id=command.order_id,
            user_id=command.user_id,
            status=Status.REJECTED if rejected else Status.PENDING,
            failure_reason=rejection,
            provider_reference=None if rejected else str(uuid.uuid4()),
            initiation=Initiation.NOT_SENT if rejected else Initiation.NEW,
            created_at=now,
            updated_at=now,
        )
        await InboxCommand.create(
            command_id=command.command_id,
            app=app,
            operation=command.operation,
            transaction_id=tx.id,
            outcome=InboxOutcome.ACCEPTED,
            received_at=now,
        )
        await _set_status(tx, tx.status, rejection, now, command_id=command.command_id)
        await Transaction.filter(id=tx.id).update(event_seq=tx.event_seq)
        if not rejected:
            await _schedule_poll(tx, plan.delays[0], plan, now)
        return Intake(InboxOutcome.ACCEPTED, tx)


# -- sending (DESIGN.md §5 steps 3-5) ---------------------------------------------------------
#
# ``send_attempts`` is the claim's fencing token: claiming increments it, and every write that
# records a send's answer requires ``initiation = SENDING`` *and* the attempt number of its own
# claim. A worker whose lease ran out while it was still waiting on the provider can therefore
# never overwrite the state of the claim that took over.


@dataclass(frozen=True, slots=True)
class PollPlan:
    """How to schedule checks: the delays (s) and the delay tiers (ms) that exist."""

    delays: Sequence[float]
    tiers_ms: Sequence[int]
    janitor_interval: float


async def claim_send(
    tx_id: uuid.UUID, expected: Initiation, attempts_seen: int, lease: float
) -> Transaction | None:
    """Claim the right to send: ``expected → SENDING`` with a lease, committed before the call.

    ``attempts_seen`` is ``send_attempts`` as the caller saw it when it decided to send: if
    anyone claimed since, the decision was taken on stale facts and the claim fails. A SENDING
    claim can only be taken over once its lease has expired.
    """
    now = utcnow()
    condition = Q(id=tx_id, status=Status.PENDING, initiation=expected, send_attempts=attempts_seen)
    if expected is Initiation.SENDING:
        condition &= Q(send_lease_until__lt=now)
    updated = await Transaction.filter(condition).update(
        initiation=Initiation.SENDING,
        send_lease_until=now + timedelta(seconds=lease),
        send_attempts=attempts_seen + 1,
        updated_at=now,
    )
    if updated != 1:
        return None
    return await Transaction.get(id=tx_id)


def _poll_message(tx: Transaction, delay: float, plan: PollPlan, now: datetime) -> OutboxMessage:
    tier = tier_for(to_ms(delay), plan.tiers_ms)
    return OutboxMessage(
        kind=OutboxKind.MESSAGE,
        exchange="",
        routing_key=topology.delay_queue("poll", tier),
        body=json.dumps({"transaction_id": str(tx.id), "poll_seq": tx.poll_seq}),
        headers={"transaction_id": str(tx.id), "poll_seq": tx.poll_seq},
        message_type="poll",
        app=tx.app,
        transaction_id=tx.id,
        created_at=now,
    )


async def _schedule_poll(
    tx: Transaction, delay: float | None, plan: PollPlan, now: datetime
) -> None:
    """Inside a DB transaction: start a new poll chain link; older poll messages become stale.

    ``delay=None``: the schedule is spent; the janitor finds the row by ``next_poll_at``.
    """
    tx.poll_seq += 1
    wait = plan.janitor_interval if delay is None else delay
    tx.next_poll_at = now + timedelta(seconds=wait)
    await Transaction.filter(id=tx.id).update(
        poll_seq=tx.poll_seq, next_poll_at=tx.next_poll_at, updated_at=now
    )
    if delay is not None:
        await _poll_message(tx, delay, plan, now).save()


async def _lock(tx_id: uuid.UUID) -> Transaction | None:
    return await Transaction.select_for_update().get_or_none(id=tx_id)


async def schedule_poll(
    tx_id: uuid.UUID, delay: float, plan: PollPlan, *, unless_due_sooner: bool = False
) -> bool:
    """Make sure a check is coming ``delay`` seconds from now (bumps ``poll_seq``).

    With ``unless_due_sooner``, a check due between now and then is left alone, so repeated
    duplicates cannot keep pushing the chain back; an overdue one (its message lost, or stuck
    in a crashed worker's outbox claim) is replaced. False if nothing was scheduled.
    """
    async with in_transaction():
        tx = await _lock(tx_id)
        if tx is None or tx.status is not Status.PENDING:
            return False
        now = utcnow()
        if (
            unless_due_sooner
            and tx.next_poll_at is not None
            and now < tx.next_poll_at <= now + timedelta(seconds=delay)
        ):
            return False
        await _schedule_poll(tx, delay, plan, now)
        return True


async def _lock_claim(tx_id: uuid.UUID, fence: int) -> Transaction | None:
    """The row, locked, if the claim with attempt number ``fence`` still holds it."""
    tx = await _lock(tx_id)
    if (
        tx is None
        or tx.status is not Status.PENDING
        or tx.initiation is not Initiation.SENDING
        or tx.send_attempts != fence
    ):
        return None
    return tx


async def record_sent(
    tx_id: uuid.UUID,
    fence: int,
    initiation: Initiation,
    delay: float | None,
    plan: PollPlan,
    *,
    uncount: bool = False,
) -> bool:
    """Record the send's answer (SENT or UNKNOWN, or NEW/UNKNOWN again when the request
    certainly did not arrive) and schedule the next check, in one DB transaction.

    ``uncount``: the attempt does not count toward the limit (the provider throttled us).
    False when the claim was lost (our lease expired and another delivery took over)."""
    async with in_transaction():
        tx = await _lock_claim(tx_id, fence)
        if tx is None:
            return False
        now = utcnow()
        attempts = fence - 1 if uncount else fence
        await Transaction.filter(id=tx_id, send_attempts=fence).update(
            initiation=initiation, send_lease_until=None, send_attempts=attempts, updated_at=now
        )
        await _schedule_poll(tx, delay, plan, now)
        return True


async def record_refused(tx_id: uuid.UUID, fence: int, reason: str) -> Event | None:
    """The provider refused the request: the transaction FAILS with the provider's reason."""
    async with in_transaction():
        tx = await _lock_claim(tx_id, fence)
        if tx is None:
            return None
        return await _set_status(
            tx,
            Status.FAILED,
            reason,
            utcnow(),
            initiation=Initiation.REFUSED,
            send_lease_until=None,
            next_poll_at=None,
        )


async def fail_unsent(tx_id: uuid.UUID, fence: int, reason: str) -> Event | None:
    """Give up on a claimed transaction whose request never reached the provider."""
    async with in_transaction():
        tx = await _lock_claim(tx_id, fence)
        if tx is None:
            return None
        return await _set_status(
            tx,
            Status.FAILED,
            reason,
            utcnow(),
            initiation=Initiation.NOT_SENT,
            send_lease_until=None,
            next_poll_at=None,
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """What a provider lookup said, to be recorded."""

    status: Status  # PENDING, COMPLETED or FAILED
    reason: str | None
    provider_transaction_id: str | None


async def record_check(
    tx_id: uuid.UUID,
    poll_seq: int,
    observation: Observation | None,
    *,
    plan: PollPlan,
    found_reference: bool,
    give_up: str | None = None,
) -> Event | None:
    """Record one check of a PENDING transaction and schedule the next.

    A final observation (COMPLETED/FAILED) is applied whatever ``poll_seq``: the status
    compare-and-set is what guards it. Otherwise ``poll_seq`` must still be the row's, so a stale
    chain neither counts nor schedules. ``found_reference`` moves a SENDING (expired lease) or
    UNKNOWN initiation to SENT. ``give_up``: when the schedule is spent, FAIL with this reason
    (only ever for a request the provider says it never registered)."""
    async with in_transaction():
        tx = await _lock(tx_id)
        if tx is None or tx.status is not Status.PENDING:
            return None
        final = observation is not None and observation.status is not Status.PENDING
        if not final and tx.poll_seq != poll_seq:
            return None
        now = utcnow()
        changes: dict[str, Any] = {"poll_count": tx.poll_count + 1}
        if found_reference and tx.initiation in (Initiation.SENDING, Initiation.UNKNOWN):
            changes.update(initiation=Initiation.SENT, send_lease_until=None)
        if observation and observation.provider_transaction_id:
            changes["provider_transaction_id"] = observation.provider_transaction_id
        if observation is not None and final:
            changes["next_poll_at"] = None
            return await _set_status(tx, observation.status, observation.reason, now, **changes)
        delay = next_poll_delay(tx.poll_count + 1, plan.delays)
        if delay is None and give_up is not None:
            changes.update(next_poll_at=None, initiation=Initiation.NOT_SENT, send_lease_until=None)
            return await _set_status(tx, Status.FAILED, give_up, now, **changes)
        await Transaction.filter(id=tx_id).update(**changes, updated_at=now)
        tx.poll_count += 1
        await _schedule_poll(tx, delay, plan, now)
        return None


async def load(tx_id: uuid.UUID) -> Transaction | None:
    return await Transaction.get_or_none(id=tx_id)


async def final_event(tx: Transaction) -> Event | None:
    """The latest final event of a transaction (what wait() returns), if it has one."""
    row = (
        await TransactionStatus.filter(
            transaction_id=tx.id, event_type__in=[str(t) for t in FINAL_EVENT_TYPES]
        )
        .order_by("-id")
        .first()
    )
    if row is None or row.event is None:
        return None
    return Event.model_validate(row.event)


async def record_attempt(record: AttemptRecord) -> None:
    """Store one provider HTTP exchange; a failure to store it never fails the payment."""
    try:
        await ProviderAttempt.create(
            transaction_id=uuid.UUID(record.transaction_id) if record.transaction_id else None,
            backend=record.backend,
            operation=record.operation,
            method=record.method,
            url=record.url[:500],
            request_body=record.request_body,
            response_status=record.response_status,
            response_body=record.response_body,
            error=record.error[:500] if record.error else None,
            duration_ms=record.duration_ms,
            created_at=utcnow(),
        )
    except Exception:
        log.warning("could not store a provider attempt", exc_info=True)
