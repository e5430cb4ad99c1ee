"""The worker's database operations. Each public coroutine is one short DB transaction.

No network await happens inside a transaction (SQLite has one connection and a transaction holds
its only lock; a PostgreSQL transaction holds row locks). Transitions are compare-and-set: the row
is locked (``SELECT ... FOR UPDATE`` on PostgreSQL), its state checked, then updated with the
expected state in the ``WHERE`` clause and the row count checked.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from kunpay_sdk import topology
from kunpay_sdk.contracts import (
    FINAL_EVENT_TYPES,
    Event,
    EventType,
    Status,
    TransactionSnapshot,
    TransactionType,
)
from kunpay_worker.domain.lifecycle import plan_transition
from kunpay_worker.domain.schedule import next_poll_delay, tier_for, to_ms
from kunpay_worker.providers.base import AttemptRecord
from kunpay_worker.storage import db
from kunpay_worker.storage.models import (
    DeadLetter,
    Initiation,
    Lease,
    OutboxKind,
    OutboxMessage,
    PaymentType,
    ProviderAttempt,
    Refund,
    Transaction,
    TransactionStatus,
)

log = structlog.get_logger("kunpay.storage")


def utcnow() -> datetime:
    return datetime.now(UTC)


class LostRace(Exception):
    """The row was not in the expected state: another delivery moved it first."""


# -- snapshots and events ---------------------------------------------------------------------


async def snapshot(tx: Transaction) -> TransactionSnapshot:
    payment_type = None
    if tx.payment_type_id is not None:  # type: ignore[attr-defined]
        row = await PaymentType.get_or_none(id=tx.payment_type_id)  # type: ignore[attr-defined]
        payment_type = row.short_name if row else None
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
        amount_refunded=tx.amount_refunded,
        payment_type=payment_type,
        gross_amount=tx.gross_amount,
        fee_amount=tx.fee_amount,
        net_amount=tx.net_amount,
        needs_reconciliation=tx.needs_reconciliation,
        created_at=tx.created_at,
        updated_at=tx.updated_at,
    )


def event_outbox_row(event: Event, app: str, now: datetime) -> OutboxMessage:
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


async def _emit(
    tx: Transaction,
    event_type: EventType,
    now: datetime,
    *,
    reason: str | None = None,
    late: bool = False,
    command_id: uuid.UUID | None = None,
    original: Transaction | None = None,
    provider_refund_id: str | None = None,
    bump: bool = True,
    sequenced: bool = False,
) -> Event:
    """Inside a DB transaction: the next event of ``tx``, written to the outbox.

    ``sequenced``: ``tx.event_seq`` already is this event's sequence, written to the row by
    the caller's own UPDATE (set_status writes it with the status compare-and-set)."""
    if not sequenced:
        tx.event_seq += 1
        if bump:
            await Transaction.filter(id=tx.id).update(event_seq=tx.event_seq)
    event = Event(
        event_id=uuid.uuid4(),
        type=event_type,
        occurred_at=now,
        sequence=tx.event_seq,
        correlation_id=tx.correlation_id,
        command_id=command_id,
        transaction=await snapshot(tx),
        reason=reason,
        original_transaction=await snapshot(original) if original is not None else None,
        provider_refund_id=provider_refund_id,
        late=late,
    )
    await db.add(event_outbox_row(event, tx.app, now))
    return event


async def set_status(
    tx: Transaction,
    new: Status,
    reason: str | None,
    now: datetime,
    *,
    actor: str = "worker",
    command_id: uuid.UUID | None = None,
    manual_refund_id: str | None = None,
    log_reason: str | None = None,
    created: bool = False,
    guard: dict[str, Any] | None = None,
    **changes: Any,
) -> Event | None:
    """Inside a DB transaction, with ``tx`` locked: compare-and-set ``tx.status`` to ``new``,
    append the status row, and put the event in the outbox. A settled refund updates the
    refunded payment in the same transaction; a second completed attempt of one payment is
    announced as ``payment.duplicate_detected``. ``log_reason``: what the status row says when
    it is not ``reason`` (an operator's note on a completion). Returns the event (None for a
    same-status reason update). ``created``: ``tx`` is a row the intake has just inserted,
    with its status and the first event's sequence. ``guard``: more columns the
    compare-and-set checks (the caller decided on a row it did not lock)."""
    current = None if created else tx.status
    plan = plan_transition(tx.type, current, new)
    if plan.current == plan.new and reason == tx.failure_reason:
        return None
    if current is not None:
        values = {"status": new, "failure_reason": reason, "updated_at": now, **changes}
        if plan.event is not None:
            # The event's sequence goes with the status, in the compare-and-set itself.
            values["event_seq"] = tx.event_seq + 1
        if guard is not None:
            # Decided on a row nobody locked: the write waits for the commit (db.update_one).
            await db.update_one(
                Transaction.filter(id=tx.id, status=current, **guard),
                LostRace(f"{tx.id} moved since it was read"),
                **values,
            )
        elif await Transaction.filter(id=tx.id, status=current).update(**values) != 1:
            raise LostRace(f"{tx.id} is no longer {current}")
        for name, value in values.items():
            setattr(tx, name, value)
    original: Transaction | None = None
    refund_id: str | None = None
    if tx.type is TransactionType.REFUND and current is not None and plan.current != plan.new:
        original, refund_id = await _settle_refund(tx, new, reason, now, manual_refund_id)
    event: Event | None = None
    if plan.event is not None:
        event = await _emit(
            tx,
            plan.event,
            now,
            reason=reason,
            late=plan.late,
            command_id=command_id,
            original=original,
            provider_refund_id=refund_id,
            sequenced=True,  # written above, or by the intake's INSERT
        )
    await db.add(
        TransactionStatus(
            transaction_id=tx.id,
            status=new,
            reason=log_reason if log_reason is not None else reason,
            actor=actor,
            event_id=event.event_id if event else None,
            event_type=str(event.type) if event else None,
            sequence=event.sequence if event else None,
            event=event.model_dump(mode="json") if event else None,
            created_at=now,
        )
    )
    if (
        tx.type is TransactionType.COLLECTION
        and new is Status.COMPLETED
        # A first attempt completing from PENDING has never been FAILED, and only a FAILED
        # collection is ever retried: no other attempt of its payment exists to look for.
        and not (current is Status.PENDING and tx.attempt_root is None)
    ):
        await _detect_duplicate(tx, now)
    return event


async def _settle_refund(
    refund: Transaction,
    new: Status,
    reason: str | None,
    now: datetime,
    manual_refund_id: str | None = None,
) -> tuple[Transaction, str | None]:
    """A refund completed or failed: move its amount out of the original's reservation, into
    ``amount_refunded`` on success, and move the original to REFUNDED (all refunded) or
    REFUND_FAILED."""
    original = await lock(refund.original_id)  # type: ignore[attr-defined]
    if original is None:
        raise LostRace(f"refund {refund.id} has no original")
    reserved = original.amount_reserved - refund.amount
    if reserved < 0:
        log.error("refund reservation below zero", refund=str(refund.id), reserved=str(reserved))
        reserved = Decimal(0)
    refund_id: str | None = None
    if new is Status.COMPLETED:
        refunded = original.amount_refunded + refund.amount
        await Transaction.filter(id=original.id).update(
            amount_reserved=reserved, amount_refunded=refunded, updated_at=now
        )
        original.amount_reserved, original.amount_refunded = reserved, refunded
        # Exactly one of the provider's and a manual refund id.
        if manual_refund_id is not None:
            refund_id = manual_refund_id
            await Refund.filter(transaction_id=refund.id).update(
                provider_refund_id=None, manual_refund_id=manual_refund_id
            )
        else:
            refund_id = (
                refund.provider_transaction_id
                or refund.provider_handle
                or refund.provider_reference
            )
            await Refund.filter(transaction_id=refund.id).update(
                provider_refund_id=refund_id, manual_refund_id=None
            )
        if refunded >= original.amount:
            await set_status(original, Status.REFUNDED, None, now)
    elif refund.needs_reconciliation:
        # Nobody knows whether this refund went out: its amount stays reserved, so it cannot be
        # refunded again, until an operator reconciles it with the provider.
        await Transaction.filter(id=original.id).update(needs_reconciliation=True, updated_at=now)
        original.needs_reconciliation = True
    else:
        await Transaction.filter(id=original.id).update(amount_reserved=reserved, updated_at=now)
        original.amount_reserved = reserved
        failure = f"refund {refund.id} failed: {reason}"
        if original.status is Status.COMPLETED or original.status is Status.REFUND_FAILED:
            await set_status(original, Status.REFUND_FAILED, failure, now)
    return original, refund_id


async def _detect_duplicate(tx: Transaction, now: datetime) -> None:
    """Two attempts of one payment both completed: the customer paid twice. Say so."""
    root = tx.attempt_root or tx.id
    if root != tx.id:
        # Completions and late successes of one payment serialise on its first attempt, so
        # two of them committing together still see each other.
        await lock(root)
    others = (
        await Transaction.filter(Q(id=root) | Q(attempt_root=root))
        .exclude(id=tx.id)
        .filter(status__in=[Status.COMPLETED, Status.REFUND_FAILED])
        .order_by("created_at")
    )
    if not others:
        return
    other = others[0]
    await _emit(
        tx,
        EventType.DUPLICATE_DETECTED,
        now,
        reason=(
            f"DOUBLE_CHARGE: {tx.id} and {other.id} are attempts of one payment and both "
            "completed; refund one of them"
        ),
        original=other,
    )


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
    # Checks of a FAILED collection for a provider's late success, each after the previous.
    late_delays: Sequence[float] = ()


async def claim_send(
    tx_id: uuid.UUID,
    expected: Initiation,
    attempts_seen: int,
    lease: float,
    *,
    seen: Transaction | None = None,
) -> Transaction | None:
    """Claim the right to send: ``expected → SENDING`` with a lease, committed before the call.

    ``attempts_seen`` is ``send_attempts`` as the caller saw it when it decided to send: if
    anyone claimed since, the decision was taken on stale facts and the claim fails. A SENDING
    claim can only be taken over once its lease has expired.

    ``seen``: the row the decision was taken on. A claim of a ``NEW`` row returns it, updated
    with the claim, instead of reading the row again: while a row stays ``NEW`` with the same
    ``send_attempts`` (which the claim's compare-and-set checked) nothing a send uses can
    change (the provider's key is only ever written under a ``SENDING`` claim; its reference,
    amount, payer and type never change); only the poll chain's columns move, and the send
    does not read them. A takeover (``SENDING``/``UNKNOWN``) always reads the row again: a late
    holder of the expired claim may have written a key meanwhile.
    """
    now = utcnow()
    condition = Q(id=tx_id, status=Status.PENDING, initiation=expected, send_attempts=attempts_seen)
    if expected is Initiation.SENDING:
        condition &= Q(send_lease_until__lt=now)
    claim = {
        "initiation": Initiation.SENDING,
        "send_lease_until": now + timedelta(seconds=lease),
        "send_attempts": attempts_seen + 1,
        "updated_at": now,
    }
    updated = await Transaction.filter(condition).update(**claim)
    if updated != 1:
        return None
    if (
        seen is not None
        and expected is Initiation.NEW
        and seen.id == tx_id
        and seen.initiation is Initiation.NEW
        and seen.send_attempts == attempts_seen
    ):
        for name, value in claim.items():
            setattr(seen, name, value)
        return seen
    return await Transaction.get(id=tx_id)


def _poll_message(tx: Transaction, delay: float, plan: PollPlan, now: datetime) -> OutboxMessage:
    # No delay: straight to the poll queue (the janitor's checks are due now).
    routing_key = (
        topology.POLL_QUEUE
        if delay <= 0
        else topology.delay_queue("poll", tier_for(to_ms(delay), plan.tiers_ms))
    )
    return OutboxMessage(
        kind=OutboxKind.MESSAGE,
        exchange="",
        routing_key=routing_key,
        body=json.dumps({"transaction_id": str(tx.id), "poll_seq": tx.poll_seq}),
        headers={"transaction_id": str(tx.id), "poll_seq": tx.poll_seq},
        message_type="poll",
        app=tx.app,
        transaction_id=tx.id,
        created_at=now,
    )


async def _schedule_poll(
    tx: Transaction,
    delay: float | None,
    plan: PollPlan,
    now: datetime,
    *,
    also: dict[str, Any] | None = None,
    where: dict[str, Any] | None = None,
    stale: BaseException | None = None,
) -> bool:
    """Inside a DB transaction: start a new poll chain link; older poll messages become stale.

    ``delay=None``: the schedule is spent; the janitor finds the row by ``next_poll_at``.
    ``also``: other column changes of the caller, written by the same UPDATE (and set on
    ``tx``); ``where``: extra conditions of that UPDATE (the caller's fence). False, with
    nothing written and ``tx`` as it was, when they no longer hold; or, given ``stale``, that
    is raised instead, possibly only at the commit (db.update_one), with ``tx`` changed.
    """
    wait = plan.janitor_interval if delay is None else delay
    values: dict[str, Any] = {"updated_at": now, **(also or {})}
    values.update(poll_seq=tx.poll_seq + 1, next_poll_at=now + timedelta(seconds=wait))
    query = Transaction.filter(id=tx.id, **(where or {}))
    if stale is not None:
        await db.update_one(query, stale, **values)
    elif await query.update(**values) != 1:
        return False
    for name, value in values.items():
        setattr(tx, name, value)
    if delay is not None:
        await db.add(_poll_message(tx, delay, plan, now))
    return True


async def lock(tx_id: uuid.UUID | None) -> Transaction | None:
    """The row, locked until the end of the DB transaction (FOR UPDATE on PostgreSQL)."""
    if tx_id is None:
        return None
    return await Transaction.select_for_update().get_or_none(id=tx_id)


async def schedule_poll(
    tx_id: uuid.UUID, delay: float, plan: PollPlan, *, unless_due_sooner: bool = False
) -> bool:
    """Make sure a check is coming ``delay`` seconds from now (bumps ``poll_seq``).

    With ``unless_due_sooner``, a check due between now and then is left alone, so repeated
    duplicates cannot keep pushing the chain back; an overdue one (its message lost, or stuck
    in a crashed worker's outbox claim) is replaced. False if nothing was scheduled.
    """
    async with _recording():
        tx = await lock(tx_id)
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


async def repeat_check(tx_id: uuid.UUID, poll_seq: int, delay: float, plan: PollPlan) -> bool:
    """The check with ``poll_seq`` could not ask the provider (throttled, circuit open): the
    same check ``delay`` seconds later, not counted. False if the chain moved on meanwhile."""
    async with _recording():
        tx = await lock(tx_id)
        if tx is None or tx.status is not Status.PENDING or tx.poll_seq != poll_seq:
            return False
        await _schedule_poll(tx, delay, plan, utcnow())
        return True


async def schedule_first_check(
    tx: Transaction, delay: float, plan: PollPlan, now: datetime
) -> None:
    """Inside the intake transaction: the first check of a row that must wait before it is
    sent (a retry's backoff)."""
    await _schedule_poll(tx, delay, plan, now)


def _claimed(tx: Transaction | None, fence: int) -> bool:
    """Whether ``tx`` is held by the claim with attempt number ``fence``."""
    return (
        tx is not None
        and tx.status is Status.PENDING
        and tx.initiation is Initiation.SENDING
        and tx.send_attempts == fence
    )


async def _lock_claim(tx_id: uuid.UUID, fence: int) -> Transaction | None:
    """The row, locked, if the claim with attempt number ``fence`` still holds it."""
    tx = await lock(tx_id)
    return tx if _claimed(tx, fence) else None


async def record_sent(
    tx_id: uuid.UUID,
    fence: int,
    initiation: Initiation,
    delay: float | None,
    plan: PollPlan,
    *,
    uncount: bool = False,
    handle: str | None = None,
    claimed: Transaction | None = None,
) -> Transaction | None:
    """Record the send's answer (SENT or UNKNOWN, or NEW/UNKNOWN again when the request
    certainly did not arrive) and schedule the next check, in one DB transaction.

    ``uncount``: the attempt does not count toward the limit (the provider throttled us).
    ``handle``: an id the provider gave in its answer. ``claimed``: the row as the sender
    holds it since its claim; while the row still has the claim and that ``poll_seq``, it is
    written without being read again (the UPDATE checks both). The row as written; None when
    the claim was lost (our lease expired and another delivery took over)."""
    now = utcnow()
    changes: dict[str, Any] = {
        "initiation": initiation,
        "send_lease_until": None,
        "send_attempts": fence - 1 if uncount else fence,
        "updated_at": now,
    }
    if handle is not None:
        changes["provider_handle"] = handle
    # One UPDATE for the answer and the next check, fenced by the claim's attempt.
    if claimed is not None and claimed.id == tx_id and _claimed(claimed, fence):
        unchanged = {
            "status": Status.PENDING,
            "initiation": Initiation.SENDING,
            "send_attempts": fence,
            "poll_seq": claimed.poll_seq,
        }
        row = copy.copy(claimed)  # the caller's copy stays as it was if this loses
        try:
            async with _recording():
                await _schedule_poll(
                    row,
                    delay,
                    plan,
                    now,
                    also=changes,
                    where=unchanged,
                    stale=LostRace(f"{tx_id} moved since its claim"),
                )
            return row
        except LostRace:
            pass  # read it again, under its lock
    async with _recording():
        tx = await _lock_claim(tx_id, fence)
        if tx is None:
            return None
        await _schedule_poll(tx, delay, plan, now, also=changes, where={"send_attempts": fence})
        return tx


async def record_handle(tx_id: uuid.UUID, fence: int, handle: str) -> bool:
    """Commit the provider's lookup key (Orange payToken) before the money request goes out;
    only while our claim's lease still holds, so a takeover never finds a key it did not get."""
    async with _recording():
        tx = await _lock_claim(tx_id, fence)
        if tx is None or tx.send_lease_until is None or tx.send_lease_until <= utcnow():
            return False
        await Transaction.filter(id=tx_id, send_attempts=fence).update(
            provider_handle=handle, updated_at=utcnow()
        )
        return True


async def reset_unsent(tx_id: uuid.UUID, expected: Initiation, attempts_seen: int) -> bool:
    """The provider never handed out its key (Orange init failed or its answer was lost), so the
    money request never left: back to NEW, to be sent as a first send."""
    now = utcnow()
    condition = Q(
        id=tx_id, status=Status.PENDING, initiation=expected, send_attempts=attempts_seen
    ) & Q(provider_handle__isnull=True)
    if expected is Initiation.SENDING:
        condition &= Q(send_lease_until__lt=now)
    updated = await Transaction.filter(condition).update(
        initiation=Initiation.NEW, send_lease_until=None, updated_at=now
    )
    return updated == 1


async def record_refused(tx_id: uuid.UUID, fence: int, reason: str) -> Event | None:
    """The provider refused the request: the transaction FAILS with the provider's reason."""
    async with _recording():
        tx = await _lock_claim(tx_id, fence)
        if tx is None:
            return None
        return await set_status(
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
    async with _recording():
        tx = await _lock_claim(tx_id, fence)
        if tx is None:
            return None
        return await set_status(
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
    # A provider id learned from the lookup (Flutterwave's charge id after an unknown send).
    handle: str | None = None


async def record_check(
    tx_id: uuid.UUID,
    poll_seq: int,
    observation: Observation | None,
    *,
    plan: PollPlan,
    found_reference: bool,
    give_up: str | None = None,
    reconcile: bool = False,
    seen: Transaction | None = None,
) -> Event | None:
    """Record one check of a PENDING transaction and schedule the next.

    A final observation (COMPLETED/FAILED) is applied whatever ``poll_seq``: the status
    compare-and-set is what guards it. Otherwise ``poll_seq`` must still be the row's, so a stale
    chain neither counts nor schedules. ``found_reference`` moves a SENDING (expired lease) or
    UNKNOWN initiation to SENT. ``give_up``: when the schedule is spent, FAIL with this reason
    (only ever for a request the provider says it never registered).

    ``seen``: the row the check was decided on. A final answer for a sent payment or payout is
    then written on it without reading it again, as long as the row still holds every value
    the write is computed from (the compare-and-set checks them); otherwise, as without it."""
    if (
        seen is not None
        and observation is not None
        and _settles_as_seen(seen, tx_id, poll_seq, observation)
    ):
        row = copy.copy(seen)  # the caller's copy stays as it was if this loses
        try:
            async with _recording():
                return await _settle(row, observation, plan, guard=_as_seen(seen))
        except LostRace:
            pass  # the row moved since: read it again, under its lock
    async with _recording():
        tx = await lock(tx_id)
        if tx is None or tx.status is not Status.PENDING:
            return None
        final = observation is not None and observation.status is not Status.PENDING
        if not final and tx.poll_seq != poll_seq:
            return None
        now = utcnow()
        if observation is not None and final:
            return await _settle(tx, observation, plan, found_reference=found_reference)
        changes = _check_changes(tx, observation, found_reference)
        delay = next_poll_delay(tx.poll_count + 1, plan.delays)
        if delay is None and give_up is not None:
            changes.update(next_poll_at=None, send_lease_until=None)
            if reconcile:
                changes["needs_reconciliation"] = True
            else:
                changes["initiation"] = Initiation.NOT_SENT
            event = await set_status(tx, Status.FAILED, give_up, now, **changes)
            if reconcile:
                # The provider may still report it: keep looking, for a late success.
                await _schedule_late_check(tx, plan, now)
            return event
        # One UPDATE for this check and the next one.
        await _schedule_poll(tx, delay, plan, now, also=changes)
        return None


def _check_changes(
    tx: Transaction, observation: Observation | None, found_reference: bool
) -> dict[str, Any]:
    """The columns one check of ``tx`` changes besides its status and its poll chain."""
    changes: dict[str, Any] = {"poll_count": tx.poll_count + 1}
    if found_reference and tx.initiation in (Initiation.SENDING, Initiation.UNKNOWN):
        changes.update(initiation=Initiation.SENT, send_lease_until=None)
    if observation and observation.provider_transaction_id:
        changes["provider_transaction_id"] = observation.provider_transaction_id
    if observation and observation.handle and tx.provider_handle is None:
        changes["provider_handle"] = observation.handle
    return changes


async def _settle(
    tx: Transaction,
    observation: Observation,
    plan: PollPlan,
    *,
    found_reference: bool = True,
    guard: dict[str, Any] | None = None,
) -> Event | None:
    """Apply a check's final answer to ``tx``; a LostRace when ``guard`` no longer holds."""
    now = utcnow()
    changes = _check_changes(tx, observation, found_reference)
    changes["next_poll_at"] = None
    event = await set_status(
        tx, observation.status, observation.reason, now, guard=guard, **changes
    )
    await _schedule_late_check(tx, plan, now)
    return event


def _settles_as_seen(
    seen: Transaction, tx_id: uuid.UUID, poll_seq: int, observation: Observation
) -> bool:
    """A final answer to the check of a sent payment or payout, ``seen`` as the check found it
    (a refund's settlement reads more rows: it always takes the lock path)."""
    return (
        seen.id == tx_id
        and seen.poll_seq == poll_seq
        and seen.status is Status.PENDING
        and seen.initiation is Initiation.SENT
        and seen.type is not TransactionType.REFUND
        and observation.status is not Status.PENDING
    )


def _as_seen(seen: Transaction) -> dict[str, Any]:
    """Everything _settle reads from a row, as ``seen`` has it (status is set_status's own)."""
    return {
        "poll_seq": seen.poll_seq,
        "poll_count": seen.poll_count,
        "event_seq": seen.event_seq,
        "initiation": seen.initiation,
        "provider_handle": seen.provider_handle,
        "needs_reconciliation": seen.needs_reconciliation,
        "late_checks": seen.late_checks,
    }


async def _schedule_late_check(tx: Transaction, plan: PollPlan, now: datetime) -> None:
    """A collection the provider reported FAILED may still complete: look again later."""
    if (
        tx.type is TransactionType.COLLECTION
        and tx.status is Status.FAILED
        and (tx.initiation is Initiation.SENT or tx.needs_reconciliation)
        and tx.late_checks < len(plan.late_delays)
    ):
        await _schedule_poll(tx, plan.late_delays[tx.late_checks], plan, now)


async def record_late_check(
    tx_id: uuid.UUID, poll_seq: int, observation: Observation | None, *, plan: PollPlan
) -> Event | None:
    """One late check of a FAILED collection: a provider's late success completes it (with
    ``late: true``); otherwise the next late check, if any."""
    async with _recording():
        tx = await lock(tx_id)
        if tx is None or tx.status is not Status.FAILED:
            return None
        now = utcnow()
        if observation is not None and observation.status is Status.COMPLETED:
            return await set_status(
                tx, Status.COMPLETED, None, now, **_late_changes(tx, observation)
            )
        if tx.poll_seq != poll_seq:
            return None
        tx.late_checks += 1
        await Transaction.filter(id=tx_id).update(late_checks=tx.late_checks, next_poll_at=None)
        await _schedule_late_check(tx, plan, now)
        return None


async def apply_observation(
    tx_id: uuid.UUID, observation: Observation, *, found_reference: bool, plan: PollPlan
) -> Event | None:
    """What verify() learned: a final status for a PENDING transaction, or a late success for
    a FAILED collection. Anything else changes nothing (the poll chain goes on as it was)."""
    async with _recording():
        tx = await lock(tx_id)
        if tx is None:
            return None
        now = utcnow()
        if tx.status is Status.PENDING and observation.status is not Status.PENDING:
            changes: dict[str, Any] = {"next_poll_at": None}
            if found_reference and tx.initiation in (Initiation.SENDING, Initiation.UNKNOWN):
                changes.update(initiation=Initiation.SENT, send_lease_until=None)
            if observation.provider_transaction_id:
                changes["provider_transaction_id"] = observation.provider_transaction_id
            if observation.handle and tx.provider_handle is None:
                changes["provider_handle"] = observation.handle
            event = await set_status(tx, observation.status, observation.reason, now, **changes)
            await _schedule_late_check(tx, plan, now)
            return event
        if (
            tx.status is Status.FAILED
            and tx.type is TransactionType.COLLECTION
            and observation.status is Status.COMPLETED
        ):
            return await set_status(
                tx, Status.COMPLETED, None, now, **_late_changes(tx, observation)
            )
        return None


def _late_changes(tx: Transaction, observation: Observation) -> dict[str, Any]:
    """What a late success records besides the status: the provider's ids, the send as SENT."""
    changes: dict[str, Any] = {"next_poll_at": None}
    if tx.initiation in (Initiation.SENDING, Initiation.UNKNOWN):
        changes.update(initiation=Initiation.SENT, send_lease_until=None)
    if observation.provider_transaction_id:
        changes["provider_transaction_id"] = observation.provider_transaction_id
    if observation.handle and tx.provider_handle is None:
        changes["provider_handle"] = observation.handle
    return changes


# -- callbacks ------------------------------------------------------------------------------


async def find_for_callback(
    backend: str,
    *,
    reference: str | None = None,
    handle: str | None = None,
    transaction_id: uuid.UUID | None = None,
) -> Transaction | None:
    """The transaction a provider's callback is about: by our provider reference, the
    provider's own id, or our transaction id — and only one of this backend's."""
    tx: Transaction | None = None
    if reference:
        tx = await Transaction.get_or_none(provider_reference=reference)
    if tx is None and handle:
        tx = await Transaction.filter(provider_handle=handle, backend=backend).first()
    if tx is None and transaction_id is not None:
        tx = await Transaction.get_or_none(id=transaction_id)
    if tx is None or tx.backend != backend:
        return None
    return tx


async def claim_hint(tx_id: uuid.UUID, window: float) -> datetime | None:
    """Coalesce callbacks: the time of this hint when it should trigger a check, None when
    another one did within ``window`` seconds."""
    now = utcnow()
    updated = await Transaction.filter(
        Q(id=tx_id) & (Q(hint_at__isnull=True) | Q(hint_at__lt=now - timedelta(seconds=window)))
    ).update(hint_at=now)
    return now if updated == 1 else None


async def release_hint(tx_id: uuid.UUID, at: datetime) -> None:
    """The check could not be queued: let the provider's retry trigger one."""
    await Transaction.filter(id=tx_id, hint_at=at).update(hint_at=None)


# -- the janitor ------------------------------------------------------------------------------


async def acquire_lease(name: str, holder: str, seconds: float) -> bool:
    """Take or renew the named lease for ``seconds``; False while another holder has it."""
    now = utcnow()
    until = now + timedelta(seconds=seconds)
    updated = await Lease.filter(Q(name=name) & (Q(expires_at__lt=now) | Q(holder=holder))).update(
        holder=holder, expires_at=until
    )
    if updated == 1:
        return True
    try:
        await Lease.create(name=name, holder=holder, expires_at=until)
    except IntegrityError:
        return False
    return True


async def release_lease(name: str, holder: str) -> None:
    """Give the named lease up (at shutdown), if this holder has it."""
    await Lease.filter(name=name, holder=holder).delete()


async def pending_counts() -> tuple[int, int]:
    """(PENDING transactions, of which stale)."""
    pending = await Transaction.filter(status=Status.PENDING).count()
    stale = await Transaction.filter(status=Status.PENDING, stale=True).count()
    return pending, stale


async def outbox_backlog() -> int:
    """Outbox rows not yet published (leased ones included)."""
    return await OutboxMessage.all().count()


async def unreplayed_dead_letters() -> int:
    """Dead letters in the table that nobody replayed yet."""
    return await DeadLetter.filter(replayed_at__isnull=True).count()


async def overdue(grace: float, limit: int) -> list[uuid.UUID]:
    """PENDING transactions whose next check is overdue (lost poll messages, spent
    schedules), oldest first. A row being sent under a live claim is not: its send schedules
    the next check (a new row is due from its intake until its send is recorded)."""
    now = utcnow()
    cutoff = now - timedelta(seconds=grace)
    rows = (
        await Transaction.filter(
            Q(send_lease_until__isnull=True) | Q(send_lease_until__lt=now),
            status=Status.PENDING,
            stale=False,
            next_poll_at__lt=cutoff,
        )
        .order_by("next_poll_at")
        .limit(limit)
        .only("id")
    )
    return [row.id for row in rows]


async def reschedule_overdue(
    tx_id: uuid.UUID, *, grace: float, max_age: float, plan: PollPlan
) -> str:
    """One overdue transaction: check it now, or — past ``max_age`` — flag it stale and stop.
    Returns "rescheduled", "stale" or "skipped" (it moved on meanwhile)."""
    async with in_transaction():
        tx = await lock(tx_id)
        now = utcnow()
        if (
            tx is None
            or tx.status is not Status.PENDING
            or tx.stale
            or tx.next_poll_at is None
            or tx.next_poll_at >= now - timedelta(seconds=grace)
            or (tx.send_lease_until is not None and tx.send_lease_until >= now)
        ):
            return "skipped"
        if tx.created_at < now - timedelta(seconds=max_age):
            await Transaction.filter(id=tx_id).update(stale=True, next_poll_at=None, updated_at=now)
            return "stale"
        await _schedule_poll(tx, 0, plan, now)
        # Due now, but a busy poll queue may take a while: not overdue again for a while, so
        # a backlog is not fed a second check of the same row at every sweep.
        await Transaction.filter(id=tx_id).update(next_poll_at=now + timedelta(seconds=grace))
        return "rescheduled"


# -- resolving by hand ------------------------------------------------------------------------


class CannotResolve(ValueError):
    pass


async def resolve(
    tx_id: uuid.UUID,
    status: Status,
    reason: str,
    *,
    actor: str,
    manual_refund_id: str | None = None,
) -> Event | None:
    """An operator settles a PENDING transaction, or one whose outcome needs reconciliation,
    as COMPLETED or FAILED: audited (actor and reason on the status row), with its event."""
    if status not in (Status.COMPLETED, Status.FAILED):
        raise CannotResolve("a transaction is resolved as COMPLETED or FAILED")
    if manual_refund_id is not None and status is not Status.COMPLETED:
        raise CannotResolve("a manual refund id says a refund was made: resolve it as COMPLETED")
    try:
        return await _resolve(tx_id, status, reason, actor=actor, manual_refund_id=manual_refund_id)
    except LostRace as exc:
        raise CannotResolve(f"{tx_id} changed meanwhile ({exc}); look at it again") from exc
    except IntegrityError as exc:
        raise CannotResolve(f"refused by the database: {exc}") from exc


async def _resolve(
    tx_id: uuid.UUID,
    status: Status,
    reason: str,
    *,
    actor: str,
    manual_refund_id: str | None,
) -> Event | None:
    async with in_transaction():
        tx = await lock(tx_id)
        if tx is None:
            raise CannotResolve(f"no transaction {tx_id}")
        open_ = tx.status is Status.PENDING or (
            tx.status is Status.FAILED and tx.needs_reconciliation
        )
        if not open_:
            raise CannotResolve(
                f"{tx_id} is {tx.status}: only PENDING transactions, or FAILED ones that need "
                "reconciliation, are resolved by hand"
            )
        if manual_refund_id is not None and tx.type is not TransactionType.REFUND:
            raise CannotResolve("a manual refund id is only for refunds")
        if (
            tx.status is Status.PENDING
            and tx.initiation is Initiation.SENDING
            and tx.send_lease_until is not None
            and tx.send_lease_until > utcnow()
        ):
            raise CannotResolve(
                f"a worker is sending it to the provider right now (until "
                f"{tx.send_lease_until.isoformat(timespec='seconds')}): try again after"
            )
        now = utcnow()
        audited = f"RESOLVED: {reason}"
        changes: dict[str, Any] = {
            "stale": False,
            "next_poll_at": None,
            "needs_reconciliation": False,
            "send_lease_until": None,
        }
        if tx.status is Status.FAILED and status is Status.FAILED:
            # Confirmed failed: a refund's reservation is released as for any failed refund.
            await Transaction.filter(id=tx_id).update(needs_reconciliation=False)
            tx.needs_reconciliation = False
            event = await set_status(tx, Status.FAILED, audited, now, actor=actor, **changes)
            if tx.type is TransactionType.REFUND:
                await _settle_refund(tx, Status.FAILED, audited, now)
                await _recheck_reconciliation(tx, now)
            return event
        if status is Status.COMPLETED:
            # The note is the status row's; a completed transaction has no failure reason.
            event = await set_status(
                tx,
                status,
                None,
                now,
                actor=actor,
                manual_refund_id=manual_refund_id,
                log_reason=audited,
                **changes,
            )
        else:
            event = await set_status(tx, status, audited, now, actor=actor, **changes)
        if tx.type is TransactionType.REFUND:
            await _recheck_reconciliation(tx, now)
        return event


async def _recheck_reconciliation(refund: Transaction, now: datetime) -> None:
    """A refund was reconciled by hand: its payment needs reconciliation only while another of
    its refunds does."""
    original_id = refund.original_id  # type: ignore[attr-defined]
    unsettled = await Transaction.filter(
        original_id=original_id, type=TransactionType.REFUND, needs_reconciliation=True
    ).exists()
    await Transaction.filter(id=original_id).update(needs_reconciliation=unsettled, updated_at=now)


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


# -- the audit trail of provider exchanges ----------------------------------------------------

# The exchanges an engine step made and has not stored yet (see attempts_held).
_HELD: ContextVar[list[ProviderAttempt] | None] = ContextVar("kunpay_held_attempts", default=None)


def _attempt_row(record: AttemptRecord) -> ProviderAttempt:
    return ProviderAttempt(
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


async def record_attempt(record: AttemptRecord) -> None:
    """Store one provider HTTP exchange, or — inside :func:`attempts_held` — hold it for the
    step's next state change. A failure to store it never fails the payment."""
    row = _attempt_row(record)
    held = _HELD.get()
    if held is not None:
        held.append(row)
        return
    await _store_attempts([row])


async def _store_attempts(rows: list[ProviderAttempt]) -> None:
    try:
        async with in_transaction():
            for row in rows:
                await db.add(row)
    except Exception:
        log.warning("could not store provider attempts", count=len(rows), exc_info=True)


@asynccontextmanager
async def attempts_held() -> AsyncIterator[None]:
    """An engine step: the provider exchanges it makes are stored in the DB transaction of the
    state change they lead to (the send's answer, a check), which costs the worker no
    statement of their own; what no such transaction took is stored at the end of the step,
    whatever the way out."""
    held: list[ProviderAttempt] = []
    token = _HELD.set(held)
    try:
        yield
    finally:
        _HELD.reset(token)
        if held:
            await _store_attempts(held)


@asynccontextmanager
async def _recording() -> AsyncIterator[None]:
    """A DB transaction that also stores the exchanges the step holds; when it rolls back,
    they stay held."""
    held = _HELD.get()
    taken = list(held) if held else []
    async with in_transaction():
        for row in taken:
            await db.add(row)
        yield
    if held:
        del held[: len(taken)]
