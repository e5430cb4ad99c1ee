"""kunpay's SQLite client (kunpay_worker/storage/sqlite.py): a DB transaction's BEGIN rides
with its first statement, INSERTs made through ``db.add`` ride with the next statement or the
COMMIT, and nothing else about transactions changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from tortoise import Tortoise, connections
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage.models import Lease, OutboxKind, OutboxMessage
from kunpay_worker.storage.sqlite import KunpaySqliteClient

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 11, 26, tzinfo=UTC)


class Trips:
    """Counts the calls the worker's loop hands to aiosqlite's thread."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.count = 0
        self.sql: list[str] = []
        run = connection._execute

        async def counted(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await run(call, *args, **kwargs)

        connection._execute = counted  # type: ignore[method-assign]


@pytest.fixture
async def trips(tmp_path: Path) -> AsyncIterator[Trips]:
    settings = Settings(database_url=f"sqlite://{tmp_path / 'k.sqlite3'}")  # type: ignore[arg-type]
    await db.migrate(settings)
    await db.init(settings)
    client = connections.get("default")
    assert isinstance(client, KunpaySqliteClient)
    await Lease.all().count()  # connected
    try:
        yield Trips(client._connection)
    finally:
        await Tortoise.close_connections()


async def holders() -> dict[str, str]:
    return {lease.name: lease.holder for lease in await Lease.all()}


async def test_begin_rides_with_the_first_statement(trips: Trips) -> None:
    async with in_transaction():
        await Lease.create(name="a", holder="x", expires_at=WHEN)
        await Lease.filter(name="a").update(holder="y")
    # BEGIN + INSERT, UPDATE, COMMIT (Tortoise's own client: 5, with a no-op commit and BEGIN)
    assert trips.count == 3
    assert await holders() == {"a": "y"}


async def test_a_transaction_that_ran_nothing_costs_nothing(trips: Trips) -> None:
    async with in_transaction():
        pass
    assert trips.count == 0
    async with in_transaction():
        await Lease.create(name="a", holder="x", expires_at=WHEN)
    assert await holders() == {"a": "x"}


async def test_a_failure_rolls_everything_back(trips: Trips) -> None:
    async def fails() -> None:
        async with in_transaction():
            await Lease.create(name="a", holder="x", expires_at=WHEN)
            await Lease.create(name="b", holder="x", expires_at=WHEN)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fails()
    assert await holders() == {}
    async with in_transaction():  # no transaction left open
        await Lease.create(name="c", holder="x", expires_at=WHEN)
    assert await holders() == {"c": "x"}


async def test_a_first_statement_that_fails_leaves_no_transaction_open(trips: Trips) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    with pytest.raises(IntegrityError):
        async with in_transaction():
            await Lease.create(name="a", holder="again", expires_at=WHEN)
    async with in_transaction():
        await Lease.create(name="b", holder="x", expires_at=WHEN)
    assert await holders() == {"a": "x", "b": "x"}


async def test_a_nested_transaction_first_is_a_savepoint_inside_the_outer_one(
    trips: Trips,
) -> None:
    async def inner() -> None:
        async with in_transaction():
            await Lease.create(name="inner", holder="x", expires_at=WHEN)
            raise ValueError("inner only")

    async def outer() -> None:
        async with in_transaction():
            # The savepoint is the outer transaction's first statement: BEGIN goes first.
            with pytest.raises(ValueError, match="inner only"):
                await inner()
            await Lease.create(name="outer", holder="x", expires_at=WHEN)
            assert await holders() == {"outer": "x"}
            raise RuntimeError("now the outer one")

    with pytest.raises(RuntimeError):
        await outer()
    assert await holders() == {}


async def test_concurrent_transactions_do_not_interleave(trips: Trips) -> None:
    await Lease.create(name="n", holder="0", expires_at=WHEN)

    async def bump() -> None:
        async with in_transaction():
            lease = await Lease.get(name="n")
            await asyncio.sleep(0)  # let the others try to step in
            await Lease.filter(name="n").update(holder=str(int(lease.holder) + 1))

    await asyncio.gather(*(bump() for _ in range(50)))
    assert await holders() == {"n": "50"}


def lease(name: str, holder: str = "x") -> Lease:
    return Lease(name=name, holder=holder, expires_at=WHEN)


async def test_inserts_through_add_ride_with_the_commit(trips: Trips) -> None:
    async with in_transaction():
        await db.add(lease("a"))
        await db.add(lease("b"))
        await db.add(lease("c"))
    assert trips.count == 1  # BEGIN, three INSERTs and COMMIT
    assert await holders() == {"a": "x", "b": "x", "c": "x"}


async def test_a_transaction_reads_what_it_added(trips: Trips) -> None:
    async with in_transaction():
        await db.add(lease("a"))
        assert (await Lease.get(name="a")).holder == "x"
        updated = await Lease.filter(name__in=["a", "nobody"]).update(holder="y")
        assert updated == 1  # the UPDATE's own count, not the INSERT's
    assert trips.count == 3
    assert await holders() == {"a": "y"}


async def test_a_generated_id_stays_unset_until_written(trips: Trips) -> None:
    row = OutboxMessage(
        kind=OutboxKind.MESSAGE,
        exchange="",
        routing_key="q",
        body="{}",
        headers={},
        message_type="poll",
        created_at=WHEN,
    )
    async with in_transaction():
        await db.add(row)
        assert row.id is None
    assert await OutboxMessage.all().count() == 1
    outside = OutboxMessage(
        kind=OutboxKind.MESSAGE,
        exchange="",
        routing_key="q",
        body="{}",
        headers={},
        message_type="poll",
        created_at=WHEN,
    )
    await db.add(outside)  # no transaction: written now, with its id
    assert outside.id is not None


async def test_a_duplicate_key_met_at_commit_rolls_everything_back(trips: Trips) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def duplicate() -> None:
        async with in_transaction():
            await Lease.filter(name="a").update(holder="changed")
            await db.add(lease("b"))
            await db.add(lease("a", "again"))

    with pytest.raises(IntegrityError):
        await duplicate()
    assert await holders() == {"a": "x"}
    async with in_transaction():  # no transaction left open
        await db.add(lease("c"))
    assert await holders() == {"a": "x", "c": "x"}


async def test_a_duplicate_key_met_at_the_next_statement_is_raised_there(trips: Trips) -> None:
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


async def test_an_insert_added_in_a_savepoint_that_rolls_back_is_never_written(
    trips: Trips,
) -> None:
    async def inner() -> None:
        async with in_transaction():
            await db.add(lease("inner"))
            raise ValueError("inner only")

    async with in_transaction():
        await db.add(lease("outer"))
        with pytest.raises(ValueError, match="inner only"):
            await inner()
        await db.add(lease("after"))
    assert await holders() == {"outer": "x", "after": "x"}


class Moved(Exception):
    pass


async def test_an_update_of_one_row_rides_with_the_commit(trips: Trips) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    trips.count = 0
    async with in_transaction():
        await db.update_one(Lease.filter(name="a", holder="x"), Moved("a moved"), holder="y")
        await db.add(lease("b"))
    assert trips.count == 1  # BEGIN, UPDATE, INSERT and COMMIT
    assert await holders() == {"a": "y", "b": "x"}


async def test_an_update_that_changes_no_row_rolls_everything_back_at_commit(
    trips: Trips,
) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def stale() -> None:
        async with in_transaction():
            await db.add(lease("b"))
            await db.update_one(Lease.filter(name="a", holder="w"), Moved("a moved"), holder="y")
            await db.add(lease("c"))

    with pytest.raises(Moved, match="a moved"):
        await stale()
    assert await holders() == {"a": "x"}
    async with in_transaction():  # no transaction left open
        await db.add(lease("d"))
    assert await holders() == {"a": "x", "d": "x"}


async def test_an_update_that_changes_no_row_is_raised_at_the_next_statement(
    trips: Trips,
) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    reached = False

    async def stale() -> None:
        nonlocal reached
        async with in_transaction():
            await db.update_one(Lease.filter(name="gone"), Moved("gone"), holder="y")
            await Lease.all().count()
            reached = True

    with pytest.raises(Moved):
        await stale()
    assert not reached
    assert await holders() == {"a": "x"}


async def test_an_update_of_one_row_outside_a_transaction_runs_now(trips: Trips) -> None:
    await Lease.create(name="a", holder="x", expires_at=WHEN)
    await db.update_one(Lease.filter(name="a"), Moved("a"), holder="y")
    assert await holders() == {"a": "y"}
    with pytest.raises(Moved):
        await db.update_one(Lease.filter(name="gone"), Moved("gone"), holder="y")


async def test_transactions_that_ran_nothing_before_their_commit_commit_together(
    trips: Trips,
) -> None:
    async def one(name: str) -> None:
        async with in_transaction():
            await db.add(lease(name))
            await db.add(lease(f"{name}-2"))

    await asyncio.gather(*(one(f"t{i}") for i in range(20)))
    # The first goes alone; the rest, which came while it was on the thread, go in the next.
    assert trips.count <= 3
    assert len(await holders()) == 40


async def test_in_a_group_each_transaction_fails_or_commits_alone(trips: Trips) -> None:
    await Lease.create(name="taken", holder="x", expires_at=WHEN)

    async def good(name: str) -> None:
        async with in_transaction():
            await db.add(lease(name))
            await db.add(lease(f"{name}-2"))

    async def duplicate() -> None:
        async with in_transaction():
            await db.add(lease("dup-1"))  # rolled back with the duplicate after it
            await db.add(lease("taken", "again"))

    async def stale() -> None:
        async with in_transaction():
            await db.add(lease("stale-1"))
            await db.update_one(Lease.filter(name="gone"), Moved("gone"), holder="y")

    trips.count = 0
    results = await asyncio.gather(
        good("a"), duplicate(), good("b"), stale(), good("c"), return_exceptions=True
    )
    assert [results[i] for i in (0, 2, 4)] == [None, None, None]
    assert isinstance(results[1], IntegrityError)
    assert isinstance(results[3], Moved)
    assert trips.count <= 2
    assert set(await holders()) == {"taken", "a", "a-2", "b", "b-2", "c", "c-2"}
    assert (await holders())["taken"] == "x"


async def test_a_transaction_that_read_first_is_not_held_up_by_a_group(trips: Trips) -> None:
    """A transaction that made a trip holds the connection until its own COMMIT; the grouped
    ones wait for it, and nothing interleaves."""
    await Lease.create(name="n", holder="0", expires_at=WHEN)

    async def bump() -> None:
        async with in_transaction():
            row = await Lease.get(name="n")
            await asyncio.sleep(0)
            await Lease.filter(name="n").update(holder=str(int(row.holder) + 1))

    async def add(name: str) -> None:
        async with in_transaction():
            await db.add(lease(name))

    await asyncio.gather(*(bump() for _ in range(5)), *(add(f"g{i}") for i in range(10)))
    leases = await holders()
    assert leases["n"] == "5"
    assert len(leases) == 11


async def test_a_write_put_off_that_failed_fails_the_commit_even_if_caught(trips: Trips) -> None:
    """The writes after it were never sent: a caller that catches its error cannot commit the
    half that was."""
    await Lease.create(name="a", holder="x", expires_at=WHEN)

    async def caught_stale() -> None:
        async with in_transaction():
            await db.add(lease("b"))
            await db.update_one(Lease.filter(name="a", holder="w"), Moved("a moved"), holder="y")
            await db.add(lease("c"))
            with pytest.raises(Moved):
                await Lease.all().count()
            await db.add(lease("d"))

    async def caught_duplicate() -> None:
        async with in_transaction():
            await db.add(lease("b"))
            await db.add(lease("a", "again"))
            await db.add(lease("c"))
            with pytest.raises(IntegrityError):
                await Lease.all().count()

    with pytest.raises(Moved, match="a moved"):
        await caught_stale()
    with pytest.raises(IntegrityError):
        await caught_duplicate()
    assert await holders() == {"a": "x"}


async def test_a_write_that_failed_inside_a_savepoint_rolled_back_is_undone_with_it(
    trips: Trips,
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
