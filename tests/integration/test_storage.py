"""The repository's compare-and-set rules on the real databases (SQLite and PostgreSQL):
concurrent deliveries of one transaction produce one claim, one transition, one event."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tortoise import Tortoise
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import in_transaction

from kunpay_sdk.contracts import (
    CollectCommand,
    Status,
    TransactionType,
    command_fingerprint,
    transaction_id_for,
    validate_payment,
)
from kunpay_worker.engine import Engine
from kunpay_worker.outbox import OutboxRelay
from kunpay_worker.providers.base import AttemptRecord
from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.intake import Intake, NewTransaction, take_in_payment
from kunpay_worker.storage.models import (
    InboxCommand,
    InboxOutcome,
    Initiation,
    OutboxMessage,
    ProviderAttempt,
    Transaction,
    TransactionStatus,
)
from tests.integration.harness import Database

pytestmark = pytest.mark.integration

PLAN = repo.PollPlan(delays=[0.2, 0.4], tiers_ms=[200, 400], janitor_interval=3600)


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.create(request.param, tmp_path)
    # Tortoise caches SQL per connection name: another dialect's statements must not leak in.
    EXECUTOR_CACHE.clear()
    settings = Settings(database_url=database.url)  # type: ignore[arg-type]
    await db.migrate(settings)
    await db.init(settings)
    try:
        yield database
    finally:
        await Tortoise.close_connections()
        EXECUTOR_CACHE.clear()
        await database.drop()


def command(key: str | None = None, amount: str = "5000") -> CollectCommand:
    key = key or uuid.uuid4().hex
    return CollectCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for("shop", "collect", key),
        idempotency_key=key,
        provider="MTN_CAMEROON",
        amount=Decimal(amount),
        currency="XAF",
        phone_number="670000000",
        order_id="o-1",
        user_id="u-1",
        issued_at=datetime.now(UTC),
    )


async def take_in(cmd: CollectCommand, *, claim: float | None = None) -> Intake:
    fields = validate_payment(
        provider=cmd.provider,
        amount=cmd.amount,
        currency=cmd.currency,
        phone_number=cmd.phone_number,
        order_id=cmd.order_id,
        user_id=cmd.user_id,
    )
    new = NewTransaction(
        type=TransactionType.COLLECTION,
        provider=fields.provider,
        backend="MTN_MOMO",
        amount=fields.amount,
        currency=fields.currency,
        phone_number=fields.phone_number,
        order_id=fields.order_id,
        user_id=fields.user_id,
    )
    fingerprint = command_fingerprint(cmd.operation, fields.model_dump())
    return await take_in_payment(
        cmd,
        app="shop",
        new=new,
        fingerprint=fingerprint,
        plan=PLAN,
        claim=None if claim is None else lambda _backend: claim,
    )


async def new_tx() -> Transaction:
    intake = await take_in(command())
    assert intake.transaction is not None
    return intake.transaction


@pytest.mark.usefixtures("database")
async def test_intake_writes_the_transaction_its_status_and_its_event() -> None:
    before = datetime.now(UTC)
    tx = await new_tx()
    assert tx.status is Status.PENDING
    assert tx.initiation is Initiation.NEW
    assert uuid.UUID(tx.provider_reference or "").version == 4
    statuses = await TransactionStatus.filter(transaction_id=tx.id)
    assert [(s.status, s.event_type, s.sequence) for s in statuses] == [
        (Status.PENDING, "payment.initiated", 1)
    ]
    kinds = sorted(m.message_type for m in await OutboxMessage.filter(transaction_id=tx.id))
    # No check yet: the delivery sends next, and the send schedules it.
    assert kinds == ["payment.initiated"]
    row = await Transaction.get(id=tx.id)
    assert (row.event_seq, row.poll_seq) == (1, 0)
    # Due now with nothing in flight: a redelivery or the janitor sees it as overdue.
    assert row.next_poll_at is not None
    assert before <= row.next_poll_at <= datetime.now(UTC)


@pytest.mark.usefixtures("database")
async def test_an_intake_can_claim_the_first_send_in_its_own_commit() -> None:
    """Engine.intake_claim: the row is born SENDING under a lease, as claim_send would leave
    it, with nothing else different; a redelivery finds it so and claims nothing."""
    before = datetime.now(UTC)
    cmd = command()
    intake = await take_in(cmd, claim=60)
    assert intake.claimed
    row = await Transaction.get(id=cmd.transaction_id)
    assert (row.status, row.initiation, row.send_attempts) == (Status.PENDING, "SENDING", 1)
    assert row.send_lease_until is not None
    assert before + timedelta(seconds=60) <= row.send_lease_until
    assert row.send_lease_until <= datetime.now(UTC) + timedelta(seconds=60)
    assert (row.event_seq, row.poll_seq) == (1, 0)
    assert [m.message_type for m in await OutboxMessage.filter(transaction_id=row.id)] == [
        "payment.initiated"
    ]
    # The claim is the send's: another delivery cannot take it while the lease holds.
    assert await repo.claim_send(row.id, Initiation.NEW, 0, lease=60) is None
    assert await repo.claim_send(row.id, Initiation.SENDING, 1, lease=60) is None
    # Its answer is recorded on the row the intake made, as after claim_send.
    assert intake.transaction is not None
    recorded = await repo.record_sent(
        row.id, 1, Initiation.SENT, 0.2, PLAN, claimed=intake.transaction
    )
    assert recorded is not None
    assert (recorded.initiation, recorded.poll_seq) == (Initiation.SENT, 1)

    again = await take_in(cmd, claim=60)
    assert (again.outcome, again.claimed) == (None, False)


@pytest.mark.usefixtures("database")
async def test_a_claim_too_close_to_its_end_sends_nothing_and_schedules_a_check() -> None:
    """Engine._send never starts a call it could not finish inside the lease (the intake's
    claim counts from the intake): it leaves the row to the check after the lease."""
    cmd = command()
    intake = await take_in(cmd, claim=1.0)  # a one-second lease, against a 60 s setting
    assert intake.transaction is not None
    engine = Engine(
        settings=Settings(send_lease=60),
        backends={},  # reaching the provider would raise: no backend
        plan=PLAN,
        notify=lambda: None,
    )
    assert await engine._send(intake.transaction, claimed=intake.transaction) is None
    row = await Transaction.get(id=cmd.transaction_id)
    assert (row.initiation, row.send_attempts, row.poll_seq) == (Initiation.SENDING, 1, 1)
    polls = await OutboxMessage.filter(transaction_id=row.id, message_type="poll")
    assert [m.headers["poll_seq"] for m in polls] == [1]
    assert await ProviderAttempt.filter(transaction_id=row.id).count() == 0


@pytest.mark.usefixtures("database")
async def test_an_intake_claims_nothing_for_a_rejected_or_waiting_payment() -> None:
    cmd = command(amount="-5")
    fields = {
        "type": TransactionType.COLLECTION,
        "provider": "MTN_CAMEROON",
        "backend": "MTN_MOMO",
        "amount": Decimal("5000"),
        "currency": "XAF",
        "phone_number": "+237670000000",
        "order_id": "o-1",
        "user_id": "u-1",
    }
    claims: list[str | None] = []

    def claim(backend: str | None) -> float:
        claims.append(backend)
        return 60.0

    rejected = await take_in_payment(
        cmd,
        app="shop",
        new=NewTransaction(**fields, rejection="INVALID: no"),  # type: ignore[arg-type]
        fingerprint="f-1",
        plan=PLAN,
        claim=claim,
    )
    later = command()
    waiting = await take_in_payment(
        later,
        app="shop",
        new=NewTransaction(  # type: ignore[arg-type]
            **fields, send_after=datetime.now(UTC) + timedelta(minutes=5)
        ),
        fingerprint="f-2",
        plan=PLAN,
        claim=claim,
    )
    assert (rejected.claimed, waiting.claimed, claims) == (False, False, [])
    rows = {r.id: r for r in await Transaction.all()}
    assert rows[cmd.transaction_id].initiation is Initiation.NOT_SENT
    assert rows[later.transaction_id].initiation is Initiation.NEW
    assert rows[later.transaction_id].send_attempts == 0


@pytest.mark.usefixtures("database")
async def test_a_redelivery_after_the_send_was_claimed_gets_a_check_coming() -> None:
    """The delivery that took a command in died after claiming the send: its redelivery
    (Engine._ensure_check) schedules a check, however soon it comes."""
    tx = await new_tx()
    assert await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60, seen=tx)
    assert await repo.schedule_poll(tx.id, 0.2, PLAN, unless_due_sooner=True)
    row = await Transaction.get(id=tx.id)
    polls = await OutboxMessage.filter(transaction_id=tx.id, message_type="poll")
    assert [m.headers["poll_seq"] for m in polls] == [row.poll_seq] == [1]


@pytest.mark.usefixtures("database")
async def test_a_redelivery_and_a_duplicate_are_recognised_and_write_nothing_twice() -> None:
    """The first try of an intake inserts without looking: the existing row refuses it, and the
    next try finds the command (a redelivery) or the transaction (a duplicate)."""
    cmd = command("k-again")
    first = await take_in(cmd)
    assert first.outcome is InboxOutcome.ACCEPTED
    again = await take_in(cmd)
    assert again.outcome is None  # a redelivery
    assert again.transaction is not None
    assert again.transaction.id == cmd.transaction_id
    duplicate = cmd.model_copy(update={"command_id": uuid.uuid4()})
    dup = await take_in(duplicate)
    assert dup.outcome is InboxOutcome.DUPLICATE
    assert await Transaction.all().count() == 1
    assert await TransactionStatus.filter(transaction_id=cmd.transaction_id).count() == 1
    assert await OutboxMessage.filter(transaction_id=cmd.transaction_id).count() == 1
    outcomes = sorted(str(row.outcome) for row in await InboxCommand.all())
    assert outcomes == ["ACCEPTED", "DUPLICATE"]


def exchange(tx: Transaction) -> AttemptRecord:
    return AttemptRecord(
        backend="MTN_MOMO",
        operation="request_to_pay",
        method="POST",
        url="/collection/v1_0/requesttopay",
        transaction_id=str(tx.id),
        request_body={"amount": "5000"},
        response_status=202,
        response_body="",
        error=None,
        duration_ms=3,
    )


@pytest.mark.usefixtures("database")
async def test_a_steps_provider_exchanges_commit_with_the_state_change_they_led_to() -> None:
    tx = await new_tx()
    assert await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60, seen=tx)
    async with repo.attempts_held():
        await repo.record_attempt(exchange(tx))
        assert await ProviderAttempt.all().count() == 0  # held for the state change
        assert await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN)
        assert await ProviderAttempt.filter(transaction_id=tx.id).count() == 1
    assert await ProviderAttempt.all().count() == 1  # not stored again at the end


@pytest.mark.usefixtures("database")
async def test_exchanges_no_state_change_took_are_stored_when_the_step_ends_however() -> None:
    tx = await new_tx()

    async def step() -> None:
        async with repo.attempts_held():
            await repo.record_attempt(exchange(tx))
            raise RuntimeError("the step failed after asking the provider")

    with pytest.raises(RuntimeError):
        await step()
    assert await ProviderAttempt.filter(transaction_id=tx.id).count() == 1
    await repo.record_attempt(exchange(tx))  # outside a step: stored at once
    assert await ProviderAttempt.filter(transaction_id=tx.id).count() == 2


@pytest.mark.usefixtures("database")
async def test_the_janitor_leaves_a_row_being_sent_and_takes_it_once_the_claim_expired() -> None:
    tx = await new_tx()
    assert await repo.overdue(0, 10) == [tx.id]  # taken in, never sent: due
    assert await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60, seen=tx)
    assert await repo.overdue(0, 10) == []  # its send schedules the next check
    assert await repo.reschedule_overdue(tx.id, grace=0, max_age=3600, plan=PLAN) == "skipped"
    # The sender died: its claim expires.
    await Transaction.filter(id=tx.id).update(
        send_lease_until=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert await repo.overdue(0, 10) == [tx.id]
    assert await repo.reschedule_overdue(tx.id, grace=0, max_age=3600, plan=PLAN) == "rescheduled"


@pytest.mark.usefixtures("database")
async def test_a_send_is_recorded_on_the_claimed_row_while_nothing_moved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tx = await new_tx()
    claimed = await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60, seen=tx)
    assert claimed is not None
    with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
        recorded = await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN, claimed=claimed)
    statements = [r.getMessage().split()[0].upper() for r in caplog.records]
    assert "UPDATE" in statements
    assert "SELECT" not in statements  # not read again
    assert recorded is not None
    assert claimed.initiation is Initiation.SENDING  # the caller's copy as it was
    row = await Transaction.get(id=tx.id)
    assert (row.initiation, row.poll_seq, row.send_lease_until) == (Initiation.SENT, 1, None)
    assert (recorded.initiation, recorded.poll_seq) == (Initiation.SENT, 1)
    polls = await OutboxMessage.filter(transaction_id=tx.id, message_type="poll")
    assert [m.headers["poll_seq"] for m in polls] == [1]


@pytest.mark.usefixtures("database")
async def test_a_send_is_recorded_on_a_fresh_read_when_a_check_was_scheduled_meanwhile() -> None:
    tx = await new_tx()
    claimed = await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60, seen=tx)
    assert claimed is not None
    # A duplicate command came during the send and scheduled a check (poll_seq 1).
    assert await repo.schedule_poll(tx.id, 0.2, PLAN, unless_due_sooner=True)
    recorded = await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN, claimed=claimed)
    assert recorded is not None
    row = await Transaction.get(id=tx.id)
    assert (
        (row.initiation, row.poll_seq)
        == (Initiation.SENT, 2)
        == (
            recorded.initiation,
            recorded.poll_seq,
        )
    )
    polls = await OutboxMessage.filter(transaction_id=tx.id, message_type="poll")
    assert sorted(m.headers["poll_seq"] for m in polls) == [1, 2]


@pytest.mark.usefixtures("database")
async def test_a_send_whose_claim_was_taken_over_records_nothing() -> None:
    tx = await new_tx()
    claimed = await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60, seen=tx)
    assert claimed is not None
    # The lease ran out and another delivery claimed it (attempt 2).
    await Transaction.filter(id=tx.id).update(send_attempts=2)
    assert await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN, claimed=claimed) is None
    row = await Transaction.get(id=tx.id)
    assert (row.initiation, row.poll_seq, row.send_attempts) == (Initiation.SENDING, 0, 2)
    assert not await OutboxMessage.filter(transaction_id=tx.id, message_type="poll").exists()


@pytest.mark.usefixtures("database")
async def test_concurrent_intakes_of_one_command_make_one_transaction() -> None:
    cmd = command()
    results = await asyncio.gather(*(take_in(cmd) for _ in range(5)))
    assert {r.transaction.id for r in results if r.transaction} == {cmd.transaction_id}
    assert await InboxCommand.filter(command_id=cmd.command_id).count() == 1
    assert await TransactionStatus.filter(transaction_id=cmd.transaction_id).count() == 1


@pytest.mark.usefixtures("database")
async def test_a_key_reused_with_other_content_is_a_conflict_that_leaves_the_transaction() -> None:
    first = command("k-conflict")
    await take_in(first)
    other = command("k-conflict", amount="9999")
    intake = await take_in(other)
    assert intake.transaction is None
    inbox = await InboxCommand.get(command_id=other.command_id)
    assert inbox.reason is not None
    assert inbox.reason.startswith("IDEMPOTENCY_CONFLICT")
    tx = await Transaction.get(id=first.transaction_id)
    assert tx.amount == Decimal("5000")
    assert await TransactionStatus.filter(transaction_id=tx.id).count() == 1


@pytest.mark.usefixtures("database")
async def test_only_one_of_many_concurrent_claims_wins() -> None:
    tx = await new_tx()
    claims = await asyncio.gather(
        *(repo.claim_send(tx.id, Initiation.NEW, 0, lease=60) for _ in range(8))
    )
    assert sum(c is not None for c in claims) == 1


@pytest.mark.usefixtures("database")
async def test_a_claim_decided_on_stale_facts_fails() -> None:
    tx = await new_tx()
    assert await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    await repo.record_sent(tx.id, 1, Initiation.UNKNOWN, 0.2, PLAN)
    # Two checks both saw UNKNOWN with one attempt; the first resends, the second must not.
    assert await repo.claim_send(tx.id, Initiation.UNKNOWN, 1, lease=60)
    await repo.record_sent(tx.id, 2, Initiation.UNKNOWN, 0.2, PLAN)
    assert await repo.claim_send(tx.id, Initiation.UNKNOWN, 1, lease=60) is None


@pytest.mark.usefixtures("database")
async def test_a_worker_whose_lease_ran_out_cannot_overwrite_the_takeover() -> None:
    tx = await new_tx()
    first = await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    assert first is not None
    # The lease runs out while the first worker still waits on the provider...
    await Transaction.filter(id=tx.id).update(
        send_lease_until=datetime.now(UTC) - timedelta(seconds=1)
    )
    second = await repo.claim_send(tx.id, Initiation.SENDING, first.send_attempts, lease=60)
    assert second is not None
    # ...then answers late: none of its writes may land.
    assert not await repo.record_sent(tx.id, first.send_attempts, Initiation.NEW, 1, PLAN)
    assert await repo.record_refused(tx.id, first.send_attempts, "LATE") is None
    assert await repo.fail_unsent(tx.id, first.send_attempts, "LATE") is None
    current = await Transaction.get(id=tx.id)
    assert current.status is Status.PENDING
    assert current.initiation is Initiation.SENDING
    assert current.send_attempts == second.send_attempts
    assert await repo.record_sent(tx.id, second.send_attempts, Initiation.SENT, 0.2, PLAN)


@pytest.mark.usefixtures("database")
async def test_concurrent_final_observations_make_one_transition_and_one_event() -> None:
    tx = await new_tx()
    await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN)
    seq = (await Transaction.get(id=tx.id)).poll_seq
    done = repo.Observation(Status.COMPLETED, None, "123")
    events = await asyncio.gather(
        *(repo.record_check(tx.id, seq, done, plan=PLAN, found_reference=True) for _ in range(6))
    )
    assert sum(e is not None for e in events) == 1
    rows = await TransactionStatus.filter(transaction_id=tx.id).order_by("id")
    assert [r.status for r in rows] == [Status.PENDING, Status.COMPLETED]
    assert [r.sequence for r in rows] == [1, 2]
    succeeded = await OutboxMessage.filter(transaction_id=tx.id, message_type="payment.succeeded")
    assert len(succeeded) == 1


async def sent_tx() -> Transaction:
    tx = await new_tx()
    await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN)
    return await Transaction.get(id=tx.id)


@pytest.mark.usefixtures("database")
async def test_a_final_answer_is_written_on_the_row_the_check_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """record_check(seen=...): no second read, and the same rows as the locked path."""
    seen = await sent_tx()
    done = repo.Observation(Status.COMPLETED, None, "mtn-9")
    with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
        event = await repo.record_check(
            seen.id, seen.poll_seq, done, plan=PLAN, found_reference=True, seen=seen
        )
    statements = [r.getMessage().split()[0].upper() for r in caplog.records]
    assert "UPDATE" in statements
    assert "SELECT" not in statements
    assert event is not None
    assert (event.sequence, event.transaction.status) == (2, Status.COMPLETED)  # type: ignore[union-attr]
    row = await Transaction.get(id=seen.id)
    assert (row.status, row.provider_transaction_id, row.poll_count, row.event_seq) == (
        Status.COMPLETED,
        "mtn-9",
        1,
        2,
    )
    assert row.next_poll_at is None
    statuses = await TransactionStatus.filter(transaction_id=seen.id).order_by("id")
    assert [(r.status, r.sequence) for r in statuses] == [
        (Status.PENDING, 1),
        (Status.COMPLETED, 2),
    ]


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("moved", ["rescheduled", "settled", "handle"])
async def test_a_final_answer_on_a_row_that_moved_since_the_check_read_it(moved: str) -> None:
    """The row changed between the check's read and its record: the compare-and-set refuses the
    stale copy, and the answer is applied (or not) as on a freshly locked row."""
    seen = await sent_tx()
    if moved == "rescheduled":  # a duplicate's check, the janitor: the chain moved on
        assert await repo.schedule_poll(seen.id, 5, PLAN)
    elif moved == "settled":  # a callback's verify() got there first
        failed = repo.Observation(Status.FAILED, "PAYER_NOT_FOUND", None)
        assert await repo.apply_observation(seen.id, failed, found_reference=True, plan=PLAN)
    else:  # a write the poll chain does not see: still refused
        await Transaction.filter(id=seen.id).update(provider_handle="h-1")
    done = repo.Observation(Status.COMPLETED, None, "mtn-9", handle="h-2")
    event = await repo.record_check(
        seen.id, seen.poll_seq, done, plan=PLAN, found_reference=True, seen=seen
    )
    row = await Transaction.get(id=seen.id)
    statuses = await TransactionStatus.filter(transaction_id=seen.id).order_by("id")
    if moved == "settled":
        assert event is None
        assert row.status is Status.FAILED
        assert [r.status for r in statuses] == [Status.PENDING, Status.FAILED]
        return
    assert event is not None
    assert row.status is Status.COMPLETED
    assert [(r.status, r.sequence) for r in statuses] == [
        (Status.PENDING, 1),
        (Status.COMPLETED, 2),
    ]
    # Written from the row as it is, not as the check saw it: a key already there is kept.
    assert row.provider_handle == ("h-1" if moved == "handle" else "h-2")
    assert row.poll_count == seen.poll_count + 1


@pytest.mark.usefixtures("database")
async def test_a_final_observation_counts_even_from_a_stale_poll() -> None:
    tx = await new_tx()
    await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN)
    stale = (await Transaction.get(id=tx.id)).poll_seq - 1
    pending = repo.Observation(Status.PENDING, None, None)
    assert await repo.record_check(tx.id, stale, pending, plan=PLAN, found_reference=True) is None
    assert (await Transaction.get(id=tx.id)).poll_count == 0  # a stale chain does not count
    done = repo.Observation(Status.COMPLETED, None, "123")
    assert await repo.record_check(tx.id, stale, done, plan=PLAN, found_reference=True)
    assert (await Transaction.get(id=tx.id)).status is Status.COMPLETED


@pytest.mark.usefixtures("database")
async def test_duplicates_do_not_push_back_a_check_that_is_already_due() -> None:
    tx = await new_tx()
    # A check due in 30 s (not "0.2 s after intake", which a slow machine may already be past).
    await Transaction.filter(id=tx.id).update(
        next_poll_at=datetime.now(UTC) + timedelta(seconds=30)
    )
    before = await Transaction.get(id=tx.id)
    assert not await repo.schedule_poll(tx.id, 60, PLAN, unless_due_sooner=True)
    after = await Transaction.get(id=tx.id)
    assert (after.poll_seq, after.next_poll_at) == (before.poll_seq, before.next_poll_at)


@pytest.mark.usefixtures("database")
async def test_a_never_registered_request_fails_once_the_schedule_is_spent() -> None:
    tx = await new_tx()
    await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    await repo.record_sent(tx.id, 1, Initiation.UNKNOWN, 0.2, PLAN)
    reason = "NOT_REGISTERED: never registered"
    for _ in range(len(PLAN.delays) - 1):
        seq = (await Transaction.get(id=tx.id)).poll_seq
        assert (
            await repo.record_check(
                tx.id, seq, None, plan=PLAN, found_reference=False, give_up=reason
            )
            is None
        )
    seq = (await Transaction.get(id=tx.id)).poll_seq
    event = await repo.record_check(
        tx.id, seq, None, plan=PLAN, found_reference=False, give_up=reason
    )
    assert event is not None
    assert event.type == "payment.failed"
    final = await Transaction.get(id=tx.id)
    assert (final.status, final.initiation, final.failure_reason) == (
        Status.FAILED,
        Initiation.NOT_SENT,
        reason,
    )


@pytest.mark.usefixtures("database")
async def test_an_overdue_check_is_replaced() -> None:
    tx = await new_tx()
    await Transaction.filter(id=tx.id).update(next_poll_at=datetime.now(UTC) - timedelta(seconds=5))
    before = (await Transaction.get(id=tx.id)).poll_seq
    assert await repo.schedule_poll(tx.id, 0.4, PLAN, unless_due_sooner=True)
    assert (await Transaction.get(id=tx.id)).poll_seq == before + 1


async def retry(original: uuid.UUID, key: str) -> Intake:
    from kunpay_sdk.contracts import RetryCommand
    from kunpay_worker.storage.intake import take_in_retry

    command = RetryCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for("shop", "retry", key),
        idempotency_key=key,
        original_transaction_id=original,
        issued_at=datetime.now(UTC),
    )
    return await take_in_retry(
        command, app="shop", rejection=lambda _o: None, send_wait=lambda _o: 0.0, plan=PLAN
    )


@pytest.mark.usefixtures("database")
async def test_a_retry_is_refused_while_an_attempt_is_pending_or_completed() -> None:
    original = await new_tx()
    await Transaction.filter(id=original.id).update(status=Status.FAILED)
    first = (await retry(original.id, "r1")).transaction
    assert first is not None
    assert (first.status, first.original_id, first.attempt_root) == (  # type: ignore[attr-defined]
        Status.PENDING,
        original.id,
        original.id,
    )
    assert first.provider_reference != original.provider_reference

    pending = (await retry(original.id, "r2")).transaction
    assert pending is not None
    assert pending.status is Status.REJECTED
    assert f"attempt {first.id} of this payment is PENDING" in (pending.failure_reason or "")

    await Transaction.filter(id=first.id).update(status=Status.COMPLETED)
    completed = (await retry(original.id, "r3")).transaction
    assert completed is not None
    assert "is COMPLETED" in (completed.failure_reason or "")

    await Transaction.filter(id=first.id).update(status=Status.FAILED)
    again = (await retry(first.id, "r4")).transaction  # retry the retry
    assert again is not None
    assert again.status is Status.PENDING
    assert again.attempt_root == original.id


@pytest.mark.usefixtures("database")
async def test_two_racing_refunds_reserve_no_more_than_was_paid() -> None:
    from kunpay_sdk.contracts import RefundCommand
    from kunpay_worker.storage.intake import RefundSupport, take_in_refund

    original = await new_tx()
    await Transaction.filter(id=original.id).update(status=Status.COMPLETED)
    support = RefundSupport(rejection=lambda _b: None, partial=lambda _b: True)

    async def refund(key: str) -> Intake:
        command = RefundCommand(
            command_id=uuid.uuid4(),
            transaction_id=transaction_id_for("shop", "refund", key),
            idempotency_key=key,
            original_transaction_id=original.id,
            amount=Decimal("3000"),
            issued_at=datetime.now(UTC),
        )
        return await take_in_refund(command, app="shop", support=support, plan=PLAN)

    results = await asyncio.gather(*(refund(f"k{i}") for i in range(5)))
    statuses = sorted(str(r.transaction.status) for r in results if r.transaction)
    assert statuses == ["PENDING", "REJECTED", "REJECTED", "REJECTED", "REJECTED"]
    assert (await Transaction.get(id=original.id)).amount_reserved == Decimal("3000")


@pytest.mark.usefixtures("database")
async def test_a_retry_through_a_waiting_backend_is_not_sent_before_its_wait() -> None:
    from kunpay_sdk.contracts import RetryCommand
    from kunpay_worker.storage.intake import take_in_retry

    original = await new_tx()
    await Transaction.filter(id=original.id).update(
        status=Status.FAILED, updated_at=datetime.now(UTC)
    )
    command = RetryCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for("shop", "retry", "orange-wait"),
        idempotency_key="orange-wait",
        original_transaction_id=original.id,
        issued_at=datetime.now(UTC),
    )
    intake = await take_in_retry(
        command, app="shop", rejection=lambda _o: None, send_wait=lambda _o: 120.0, plan=PLAN
    )
    tx = intake.transaction
    assert tx is not None
    assert tx.send_after is not None
    wait = (tx.send_after - datetime.now(UTC)).total_seconds()
    assert 110 < wait <= 120
    # Its first check is due when it may be sent, not before.
    assert tx.next_poll_at is not None
    assert tx.next_poll_at >= tx.send_after


@pytest.mark.usefixtures("database")
async def test_a_retry_is_refused_while_an_attempt_needs_reconciliation() -> None:
    original = await new_tx()
    await Transaction.filter(id=original.id).update(
        status=Status.FAILED, needs_reconciliation=True, initiation=Initiation.UNKNOWN
    )
    refused = (await retry(original.id, "after-unknown")).transaction
    assert refused is not None
    assert refused.status is Status.REJECTED
    assert "outcome of attempt" in (refused.failure_reason or "")


@pytest.mark.usefixtures("database")
async def test_a_refund_of_a_negative_amount_is_rejected_and_reserves_nothing() -> None:
    from kunpay_sdk.contracts import RefundCommand
    from kunpay_worker.storage.intake import RefundSupport, take_in_refund

    original = await new_tx()
    await Transaction.filter(id=original.id).update(status=Status.COMPLETED)
    command = RefundCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for("shop", "refund", "negative"),
        idempotency_key="negative",
        original_transaction_id=original.id,
        amount=Decimal("-3000"),
        issued_at=datetime.now(UTC),
    )
    support = RefundSupport(rejection=lambda _b: None, partial=lambda _b: True)
    intake = await take_in_refund(command, app="shop", support=support, plan=PLAN)
    assert intake.transaction is not None
    assert intake.transaction.status is Status.REJECTED
    assert (await Transaction.get(id=original.id)).amount_reserved == 0


@pytest.mark.usefixtures("database")
async def test_an_unsent_request_without_a_provider_key_goes_back_to_new() -> None:
    tx = await new_tx()
    claimed = await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    assert claimed is not None
    await repo.record_sent(tx.id, 1, Initiation.UNKNOWN, 0.2, PLAN)
    assert await repo.reset_unsent(tx.id, Initiation.UNKNOWN, 1)
    current = await Transaction.get(id=tx.id)
    assert (current.initiation, current.send_attempts) == (Initiation.NEW, 1)
    # Not once a key was committed: then the request may be out.
    await repo.claim_send(tx.id, Initiation.NEW, 1, lease=60)
    assert await repo.record_handle(tx.id, 2, "pay-token")
    await repo.record_sent(tx.id, 2, Initiation.UNKNOWN, 0.2, PLAN)
    assert not await repo.reset_unsent(tx.id, Initiation.UNKNOWN, 2)


@pytest.mark.usefixtures("database")
async def test_a_key_is_not_recorded_once_the_claim_has_expired() -> None:
    tx = await new_tx()
    await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60)
    await Transaction.filter(id=tx.id).update(
        send_lease_until=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert not await repo.record_handle(tx.id, 1, "late-token")
    assert (await Transaction.get(id=tx.id)).provider_handle is None


# -- resolving by hand -------------------------------------------------------------------------


async def refund_of_unknown_outcome(original: Transaction) -> Transaction:
    """A refund of 3000 of ``original`` whose outcome nobody knows: FAILED, reconcile."""
    from kunpay_sdk.contracts import RefundCommand
    from kunpay_worker.storage.intake import RefundSupport, take_in_refund

    await Transaction.filter(id=original.id).update(status=Status.COMPLETED)
    command = RefundCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for("shop", "refund", uuid.uuid4().hex),
        idempotency_key=uuid.uuid4().hex,
        original_transaction_id=original.id,
        amount=Decimal("3000"),
        issued_at=datetime.now(UTC),
    )
    support = RefundSupport(rejection=lambda _b: None, partial=lambda _b: True)
    refund = (await take_in_refund(command, app="shop", support=support, plan=PLAN)).transaction
    assert refund is not None
    async with in_transaction():
        locked = await repo.lock(refund.id)
        assert locked is not None
        await repo.set_status(
            locked, Status.FAILED, "UNKNOWN_OUTCOME", datetime.now(UTC), needs_reconciliation=True
        )
    payment = await Transaction.get(id=original.id)
    assert (payment.needs_reconciliation, payment.amount_reserved) == (True, Decimal("3000"))
    return await Transaction.get(id=refund.id)


async def last_status_row(tx_id: uuid.UUID) -> TransactionStatus:
    row = await TransactionStatus.filter(transaction_id=tx_id).order_by("-id").first()
    assert row is not None
    return row


@pytest.mark.usefixtures("database")
async def test_a_pending_payment_resolved_as_completed_is_audited_and_announced() -> None:
    tx = await new_tx()
    event = await repo.resolve(tx.id, Status.COMPLETED, "MTN ticket 4411", actor="operator:bob")
    assert event is not None
    assert str(event.type) == "payment.succeeded"
    assert event.transaction is not None
    assert event.transaction.failure_reason is None
    row = await last_status_row(tx.id)
    assert (row.status, row.reason, row.actor) == (
        Status.COMPLETED,
        "RESOLVED: MTN ticket 4411",
        "operator:bob",
    )
    with pytest.raises(repo.CannotResolve, match="is COMPLETED"):
        await repo.resolve(tx.id, Status.FAILED, "again", actor="operator:bob")


@pytest.mark.usefixtures("database")
async def test_a_payment_being_sent_or_a_manual_refund_id_on_a_failure_is_refused() -> None:
    tx = await new_tx()
    await Transaction.filter(id=tx.id).update(
        initiation=Initiation.SENDING, send_lease_until=datetime.now(UTC) + timedelta(minutes=1)
    )
    with pytest.raises(repo.CannotResolve, match="sending it to the provider right now"):
        await repo.resolve(tx.id, Status.FAILED, "no", actor="operator:bob")
    with pytest.raises(repo.CannotResolve, match="resolve it as COMPLETED"):
        await repo.resolve(tx.id, Status.FAILED, "no", actor="o", manual_refund_id="M-1")
    assert (await Transaction.get(id=tx.id)).status is Status.PENDING


@pytest.mark.usefixtures("database")
async def test_a_refund_reconciled_as_made_by_hand_counts_as_refunded() -> None:
    from kunpay_worker.storage.models import Refund

    original = await new_tx()
    refund = await refund_of_unknown_outcome(original)
    event = await repo.resolve(
        refund.id, Status.COMPLETED, "by hand", actor="operator:bob", manual_refund_id="M-1"
    )
    assert event is not None
    payment = await Transaction.get(id=original.id)
    assert payment.amount_refunded == Decimal("3000")
    assert payment.amount_reserved == Decimal("0")
    assert payment.needs_reconciliation is False
    settled = await Transaction.get(id=refund.id)
    assert (settled.status, settled.failure_reason) == (Status.COMPLETED, None)
    assert (await Refund.get(transaction_id=refund.id)).manual_refund_id == "M-1"


@pytest.mark.usefixtures("database")
async def test_a_refund_reconciled_as_failed_frees_the_amount() -> None:
    original = await new_tx()
    refund = await refund_of_unknown_outcome(original)
    await repo.resolve(refund.id, Status.FAILED, "MTN: never left", actor="operator:bob")
    payment = await Transaction.get(id=original.id)
    assert payment.amount_refunded == Decimal("0")
    assert payment.amount_reserved == Decimal("0")
    assert payment.needs_reconciliation is False
    settled = await Transaction.get(id=refund.id)
    assert (settled.status, settled.needs_reconciliation) == (Status.FAILED, False)
    row = await last_status_row(refund.id)
    assert (row.reason, row.actor) == ("RESOLVED: MTN: never left", "operator:bob")


async def test_a_transaction_whose_begin_fails_leaves_the_task_usable(
    database: Database,
) -> None:
    """PostgreSQL restarted under a long-lived task: the first transaction on a dead pooled
    connection fails, and the next one in the same task works (Tortoise alone would keep the
    dead transaction as the task's connection for good)."""
    if database.kind != "postgres":
        pytest.skip("pooled connections are PostgreSQL's")
    import asyncpg

    async def count() -> int:
        async with in_transaction():
            return await Transaction.all().count()

    assert await count() == 0  # the pool now holds a live connection
    name = database.url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(database.url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await admin.close()
    failures = 0
    for _ in range(3):
        try:
            assert await count() == 0
            break
        except Exception:
            failures += 1
    assert failures < 3, "the task kept failing after the database came back"
    assert await count() == 0


async def test_a_pooled_connection_goes_back_without_a_reset_query_but_never_in_a_transaction(
    database: Database,
) -> None:
    """kunpay_worker/storage/postgres.py: no ``RESET ALL``… round trip after each pooled
    query, and a transaction left open (a task cancelled inside it) is still rolled back."""
    if database.kind != "postgres":
        pytest.skip("pooled connections are PostgreSQL's")
    from tortoise import connections

    pool = connections.get("default")._pool  # type: ignore[attr-defined]
    assert pool is not None or await Transaction.all().count() == 0
    pool = connections.get("default")._pool  # type: ignore[attr-defined]
    queries: list[str] = []
    conn = await pool.acquire()
    conn.add_query_logger(lambda record: queries.append(record.query))
    await conn.fetchval("SELECT 1")
    await pool.release(conn)
    assert queries == ["SELECT 1"]

    conn = await pool.acquire()
    await conn.execute("BEGIN")
    await conn.execute("CREATE TEMPORARY TABLE left_open (x int)")
    assert conn.is_in_transaction()
    await pool.release(conn)  # asyncpg rolls back (and tells the loop's exception handler)
    seen = []
    for _ in range(pool.get_size()):
        conn = await pool.acquire()
        seen.append(conn)
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    for conn in seen:
        await pool.release(conn)


class _RecordingPublisher:
    """What the outbox relay published, by routing key (a stand-in for the broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, object]]] = []

    async def publish(self, exchange: str, routing_key: str, message: Any, **_: Any) -> None:
        self.sent.append((exchange, routing_key, dict(message.headers)))


@pytest.mark.usefixtures("database")
async def test_the_relay_drops_a_check_a_newer_one_of_its_transaction_supersedes() -> None:
    """A duplicate command's check and the send's check in one pass: only the newer one is
    published (the worker would drop the older one as stale), events all go out, in order, and
    every row is deleted."""
    intake = await take_in(command())
    tx = intake.transaction
    assert tx is not None
    assert await repo.schedule_poll(tx.id, 0.2, PLAN, unless_due_sooner=True)
    tx = await Transaction.get(id=tx.id)
    claimed = await repo.claim_send(tx.id, Initiation.NEW, 0, lease=60, seen=tx)
    assert claimed is tx
    assert tx.initiation is Initiation.SENDING
    assert tx.send_attempts == 1
    assert await repo.record_sent(tx.id, 1, Initiation.SENT, 0.2, PLAN)
    publisher = _RecordingPublisher()
    relay = OutboxRelay(publisher, batch=50, sweep_interval=1, lease=15)  # type: ignore[arg-type]
    await relay.drain()
    polls = [h["poll_seq"] for _, _, h in publisher.sent if "poll_seq" in h]
    row = await Transaction.get(id=tx.id)
    assert polls == [row.poll_seq] == [2]
    events = [h["event_type"] for _, _, h in publisher.sent if "event_type" in h]
    assert events == ["payment.initiated", "payment.initiated"]  # events and outcomes
    assert await OutboxMessage.all().count() == 0
