"""kunpay's PostgreSQL client (kunpay_worker/storage/postgres.py): a DB transaction's BEGIN waits
for its first statement that is not put off, the writes put off through ``db.add`` and
``db.update_one`` go as one statement, and a transaction made only of those is that one
statement; what a transaction does is otherwise unchanged."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tortoise import Tortoise, connections
from tortoise.exceptions import IntegrityError, TransactionManagementError
from tortoise.transactions import in_transaction

from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage.models import Lease, OutboxKind, OutboxMessage
from kunpay_worker.storage.postgres import KunpayAsyncpgClient
from tests.integration.harness import Database

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 11, 26, tzinfo=UTC)


class Sent:
    """The statements sent on the pool's one connection, one per round trip."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def words(self) -> list[str]:
        """Each statement's first word, and for a combined one what each of its parts writes."""
        out = []
        for sql in self.sql:
            parts = re.findall(r'w\d+ AS \((INSERT|UPDATE|DELETE)\b[^"]*"(\w+)"', sql)
            if sql.startswith("WITH ") and parts:
                out.append("WITH " + ",".join(f"{verb} {table}" for verb, table in parts))
            else:
                out.append(sql.split()[0].upper())
        return out

    def clear(self) -> None:
        self.sql.clear()


@pytest.fixture
async def sent(tmp_path: Path) -> AsyncIterator[Sent]:
    database = await Database.create("postgres", tmp_path)
    settings = Settings(database_url=database.url, database_pool_size=1)  # type: ignore[arg-type]
    await db.migrate(settings)
    await db.init(settings)
    client = connections.get("default")
    assert isinstance(client, KunpayAsyncpgClient)
    await Lease.all().count()  # the pool and its one connection exist
    assert client._pool is not None
    record = Sent()
    connection = await client._pool.acquire()
    connection.add_query_logger(lambda query: record.sql.append(" ".join(query.query.split())))
    await client._pool.release(connection)
    try:
        yield record
    finally:
        await Tortoise.close_connections()
        await database.drop()


def lease(name: str, holder: str = "x") -> Lease:
    return Lease(name=name, holder=holder, expires_at=WHEN)


def message(attempts: int = 0) -> OutboxMessage:
    return OutboxMessage(
        kind=OutboxKind.MESSAGE,
        exchange="",
        routing_key="q",
        body="{}",
        headers={"n": 1},
        message_type="poll",
        created_at=WHEN,
        attempts=attempts,
    )


async def holders() -> dict[str, str]:
    return {row.name: row.holder for row in await Lease.all()}


async def in_transaction_now() -> bool:
    client = connections.get("default")
    assert isinstance(client, KunpayAsyncpgClient)
    assert client._pool is not None
    connection = await client._pool.acquire()
    try:
        return bool(connection.is_in_transaction())
    finally:
        await client._pool.release(connection)


class Moved(Exception):
    pass


async def test_writes_put_off_are_the_whole_transaction_in_one_statement(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    sent.clear()
    async with in_transaction():
        await db.add(message(1))
        await db.update_one(Lease.filter(name="a", holder="x"), Moved("a moved"), holder="y")
        await db.add(message(2))
    # No BEGIN and no COMMIT: one statement is a transaction of its own.
    assert sent.words() == ["WITH INSERT outbox,UPDATE leases,INSERT outbox"]
    assert await holders() == {"a": "y"}
    assert sorted(m.attempts for m in await OutboxMessage.all()) == [1, 2]


async def test_a_transaction_that_ran_nothing_sends_nothing(sent: Sent) -> None:
    async with in_transaction():
        pass
    assert sent.sql == []


async def test_begin_goes_with_the_first_statement_not_put_off(sent: Sent) -> None:
    async with in_transaction():
        await db.add(lease("a"))
        await db.add(lease("b"))
        # The read sees both: they go first, as one statement, inside the transaction.
        assert await holders() == {"a": "x", "b": "x"}
        await db.add(lease("c"))
    assert sent.words() == [
        "BEGIN",
        "WITH INSERT leases,INSERT leases",
        "SELECT",
        "WITH INSERT leases",
        "COMMIT",
    ]
    assert await holders() == {"a": "x", "b": "x", "c": "x"}


async def test_a_generated_id_stays_unset_until_written(sent: Sent) -> None:
    inside = message()
    async with in_transaction():
        await db.add(inside)
        assert inside.id is None
    assert await OutboxMessage.all().count() == 1
    outside = message()
    await db.add(outside)  # no transaction: written now, with its id
    assert outside.id is not None


async def test_a_duplicate_key_met_at_commit_rolls_everything_back(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    kept = message()
    await kept.save()
    sent.clear()

    async def duplicate() -> None:
        async with in_transaction():
            await db.update_one(OutboxMessage.filter(id=kept.id), Moved("m"), attempts=3)
            await db.add(lease("b"))
            await db.add(lease("a", "again"))

    with pytest.raises(IntegrityError):
        await duplicate()
    assert sent.words() == ["WITH UPDATE outbox,INSERT leases,INSERT leases"]
    assert await holders() == {"a": "x"}
    assert (await OutboxMessage.get(id=kept.id)).attempts == 0
    assert not await in_transaction_now()


async def test_a_duplicate_key_met_after_begin_rolls_everything_back(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def duplicate() -> None:
        async with in_transaction():
            await Lease.filter(name="a").update(holder="changed")  # BEGIN goes now
            await db.add(lease("b"))
            await db.add(lease("a", "again"))

    with pytest.raises(IntegrityError):
        await duplicate()
    assert await holders() == {"a": "x"}
    assert not await in_transaction_now()
    async with in_transaction():
        await db.add(lease("c"))
    assert await holders() == {"a": "x", "c": "x"}


async def test_a_duplicate_key_met_at_the_next_statement_is_raised_there(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    reached = False

    async def duplicate() -> None:
        nonlocal reached
        async with in_transaction():
            await db.add(lease("a", "again"))
            await Lease.all().count()
            reached = True

    with pytest.raises(IntegrityError):
        await duplicate()
    assert not reached
    assert await holders() == {"a": "x"}
    assert not await in_transaction_now()


async def test_an_update_that_changes_no_row_undoes_the_whole_statement(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def stale() -> None:
        async with in_transaction():
            await db.add(lease("b"))
            await db.update_one(Lease.filter(name="a", holder="w"), Moved("a moved"), holder="y")
            await db.add(lease("c"))

    with pytest.raises(Moved, match="a moved"):
        await stale()
    assert await holders() == {"a": "x"}
    assert not await in_transaction_now()


async def test_the_update_that_changed_no_row_is_the_one_raised(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    kept = message()
    await kept.save()
    sent.clear()

    async def two(lease_holder: str, claim: str | None) -> None:
        async with in_transaction():
            await db.update_one(
                Lease.filter(name="a", holder=lease_holder), Moved("the lease"), holder="y"
            )
            await db.update_one(
                OutboxMessage.filter(id=kept.id, claim=claim), Moved("the message"), attempts=5
            )

    with pytest.raises(Moved, match="the message"):
        await two("x", "nobody's")
    with pytest.raises(Moved, match="the lease"):
        await two("w", None)
    assert sent.words() == ["WITH UPDATE leases,UPDATE outbox"] * 2  # one statement each, no BEGIN
    assert await holders() == {"a": "x"}
    assert (await OutboxMessage.get(id=kept.id)).attempts == 0
    await two("x", None)
    assert await holders() == {"a": "y"}
    assert (await OutboxMessage.get(id=kept.id)).attempts == 5


async def test_an_update_that_changes_no_row_is_raised_at_the_next_statement(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    reached = False

    async def stale() -> None:
        nonlocal reached
        async with in_transaction():
            await Lease.all().count()
            await db.update_one(Lease.filter(name="gone"), Moved("gone"), holder="y")
            await Lease.all().count()
            reached = True

    with pytest.raises(Moved):
        await stale()
    assert not reached
    assert not await in_transaction_now()


async def test_writes_to_one_table_an_update_touches_go_one_by_one(sent: Sent) -> None:
    """In one statement the UPDATE would not see the INSERT before it (every query of a
    statement sees the database as it was when it started): they go in a row instead."""
    sent.clear()
    async with in_transaction():
        await db.add(lease("a"))
        await db.update_one(Lease.filter(name="a"), Moved("a"), holder="y")
    assert sent.words() == ["BEGIN", "INSERT", "UPDATE", "COMMIT"]
    assert await holders() == {"a": "y"}

    async def stale() -> None:
        async with in_transaction():
            await db.add(lease("b"))
            await db.update_one(Lease.filter(name="b", holder="w"), Moved("b moved"), holder="y")

    with pytest.raises(Moved, match="b moved"):
        await stale()
    assert await holders() == {"a": "y"}
    assert not await in_transaction_now()


async def test_an_update_of_one_row_outside_a_transaction_runs_now(sent: Sent) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    await db.update_one(Lease.filter(name="a"), Moved("a"), holder="y")
    assert await holders() == {"a": "y"}
    with pytest.raises(Moved):
        await db.update_one(Lease.filter(name="gone"), Moved("gone"), holder="y")


async def test_savepoints(sent: Sent) -> None:
    async def rolled_back() -> None:
        async with in_transaction():
            await db.add(lease("inner"))
            raise ValueError("inner only")

    async def duplicate() -> None:
        async with in_transaction():
            await db.add(lease("inner-2"))
            await db.add(lease("outer", "again"))  # met as the savepoint is released

    async with in_transaction():
        await db.add(lease("outer"))
        with pytest.raises(ValueError, match="inner only"):
            await rolled_back()
        with pytest.raises(IntegrityError):
            await duplicate()
        await db.add(lease("after"))
    assert await holders() == {"outer": "x", "after": "x"}
    assert not await in_transaction_now()


async def test_a_failure_rolls_everything_back_and_leaves_nothing_open(sent: Sent) -> None:
    async def fails() -> None:
        async with in_transaction():
            await db.add(message())
            await Lease.create(name="b", holder="x", expires_at=WHEN)
            await db.add(lease("c"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fails()
    assert await holders() == {}
    assert await OutboxMessage.all().count() == 0
    assert not await in_transaction_now()


async def test_concurrent_transactions_each_commit_or_fail_alone(sent: Sent) -> None:
    await Lease.create(name="n", holder="0", expires_at=WHEN)

    async def bump() -> None:
        async with in_transaction():
            row = await Lease.select_for_update().get(name="n")
            await asyncio.sleep(0)
            await db.update_one(Lease.filter(name="n"), Moved("n"), holder=str(int(row.holder) + 1))

    async def add(name: str) -> None:
        async with in_transaction():
            await db.add(lease(name))
            await db.add(lease("dup" if name.endswith("7") else f"{name}-2"))

    await Lease.create(name="dup", holder="x", expires_at=WHEN)
    results = await asyncio.gather(
        *(bump() for _ in range(20)),
        *(add(f"p{i}") for i in range(20)),
        return_exceptions=True,
    )
    failed = [r for r in results if r is not None]
    assert [type(r) for r in failed] == [IntegrityError, IntegrityError]
    names = await holders()
    assert names["n"] == "20"
    assert len(names) == 2 + 18 * 2
    assert {"p7", "p17"}.isdisjoint(names)


async def test_writes_put_off_run_in_the_order_they_were_made(sent: Sent) -> None:
    """Their generated ids follow that order (the outbox relay publishes a transaction's rows
    by id), and the first error met is the first write's."""
    async with in_transaction():
        for attempts in (1, 2, 3, 4):
            await db.add(message(attempts))
    async with in_transaction():
        await db.add(message(5))
        await Lease.all().count()
        await db.add(message(6))
        await db.add(message(7))
    rows = await OutboxMessage.all().order_by("id")
    assert [row.attempts for row in rows] == [1, 2, 3, 4, 5, 6, 7]

    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def duplicate_then_stale() -> None:
        async with in_transaction():
            await db.add(lease("a", "again"))
            await db.update_one(OutboxMessage.filter(id=-1), Moved("never there"), attempts=0)

    with pytest.raises(IntegrityError):
        await duplicate_then_stale()


async def test_a_lost_compare_and_set_that_was_caught_still_fails_the_commit(sent: Sent) -> None:
    """Sent on its own (its table has another write), it changed no row without an error from
    PostgreSQL: a caller that catches its exception cannot commit half of the writes."""
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def caught() -> None:
        async with in_transaction():
            await db.add(lease("b"))
            await db.update_one(Lease.filter(name="a", holder="w"), Moved("a moved"), holder="y")
            await db.add(lease("c"))
            with pytest.raises(Moved):
                await Lease.all().count()  # the writes go here, the UPDATE changes nothing
            await db.add(lease("d"))

    with pytest.raises(Moved, match="a moved"):
        await caught()
    assert await holders() == {"a": "x"}
    assert not await in_transaction_now()


async def test_a_statement_error_that_was_caught_fails_the_commit(sent: Sent) -> None:
    """PostgreSQL answers COMMIT with ROLLBACK once a statement failed in the transaction:
    that is raised, not taken for a commit."""
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def caught() -> None:
        async with in_transaction():
            await Lease.filter(name="a").update(holder="y")
            with pytest.raises(IntegrityError):
                await Lease.create(name="a", holder="again", expires_at=WHEN)

    with pytest.raises(TransactionManagementError, match="rolled back"):
        await caught()
    assert await holders() == {"a": "x"}
    assert not await in_transaction_now()


async def test_a_lost_compare_and_set_inside_a_savepoint_rolled_back_is_undone_with_it(
    sent: Sent,
) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def inner() -> None:
        async with in_transaction():
            await db.add(lease("b"))
            await db.update_one(Lease.filter(name="a", holder="w"), Moved("a moved"), holder="y")
            await Lease.all().count()

    async with in_transaction():
        await db.add(lease("outer"))
        with pytest.raises(Moved):
            await inner()
        await db.add(lease("after"))
    assert await holders() == {"a": "x", "outer": "x", "after": "x"}
