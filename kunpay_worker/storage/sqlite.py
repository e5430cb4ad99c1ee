"""Tortoise's SQLite client, with fewer trips to the SQLite thread per DB transaction.

aiosqlite runs every statement on its own thread, and the worker's event loop resumes the
caller after each one. Tortoise holds SQLite's single connection for the whole of a DB
transaction, so every trip inside one is time nobody else can use the database: on a busy
worker that convoy, not SQLite, limits throughput (README, Performance). Two changes:

* ``BEGIN`` goes with the transaction's first statement, in the same trip (Tortoise's own
  client spends two trips on it: a ``commit()`` that does nothing in autocommit mode, then
  ``BEGIN``), and a transaction that ran nothing costs none;
* an INSERT made through :func:`kunpay_worker.storage.db.add` (one whose caller needs no
  generated id), and an UPDATE of one row made through :func:`kunpay_worker.storage.db.
  update_one` (a compare-and-set whose caller goes on as if it held), wait for the
  transaction's next statement or its ``COMMIT`` and go in the same trip, in order. An error
  one meets (a duplicate key; the UPDATE's exception when it changed no row) is raised there,
  and the transaction is rolled back as for any error.

The statements, their order, the connection lock and the error translation are Tortoise's.
``Settings.tortoise_config`` names this module as the engine of ``sqlite://`` URLs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
from tortoise.backends.base.client import NestedTransactionContext, TransactionContext
from tortoise.backends.sqlite.client import (
    SqliteClient,
    SqliteTransactionContext,
    SqliteTransactionWrapper,
    translate_exceptions,
)
from tortoise.exceptions import IntegrityError, OperationalError, TransactionManagementError

__all__ = ["KunpaySqliteClient", "client_class"]

T = TypeVar("T")
# A statement put off: its SQL, its values, and for an UPDATE of one row, what to raise when it
# changes none.
Write = tuple[str, list[Any], BaseException | None]


class _Owed:
    """What the DB transaction has not sent yet: its ``BEGIN`` and the INSERTs put off.
    Shared by the transaction and the savepoints nested in it."""

    __slots__ = ("begin", "defer_next", "defer_update", "writes")

    def __init__(self) -> None:
        self.begin = False
        self.writes: list[Write] = []
        self.defer_next = False
        self.defer_update: BaseException | None = None

    def take(self) -> tuple[bool, list[Write]]:
        begin, writes = self.begin, self.writes
        self.begin, self.writes = False, []
        return begin, writes


# -- on the SQLite thread ----------------------------------------------------------------------


def _catch_up(conn: sqlite3.Connection, begin: bool, writes: list[Write]) -> None:
    if begin:
        conn.execute("BEGIN")
    for query, values, stale in writes:
        changed = conn.execute(query, values).rowcount
        if stale is not None and changed != 1:
            raise stale


def _then(
    conn: sqlite3.Connection, begin: bool, writes: list[Write], call: Callable[..., T], *args: Any
) -> T:
    _catch_up(conn, begin, writes)
    return call(*args)


def _changes_and_rows(
    conn: sqlite3.Connection, query: str, values: list[Any]
) -> tuple[int, list[Any]]:
    # Counted here, after any writes that went first: Tortoise counts from the loop thread.
    start = conn.total_changes
    rows = conn.execute(query, values).fetchall()
    return (conn.total_changes - start) or len(rows), rows


def _finish(conn: sqlite3.Connection, begin: bool, writes: list[Write]) -> None:
    try:
        _catch_up(conn, begin, writes)
        conn.commit()
    except BaseException:
        if conn.in_transaction:  # never leave the shared connection inside a transaction
            conn.rollback()
        raise


def _statement(conn: sqlite3.Connection, sql: str) -> None:
    conn.execute(sql)


class KunpaySqliteClient(SqliteClient):
    def _in_transaction(self) -> TransactionContext:
        return SqliteTransactionContext(_TransactionWrapper(self), self._lock)


class _TransactionWrapper(SqliteTransactionWrapper):
    def __init__(self, connection: SqliteClient) -> None:
        super().__init__(connection)
        parent = getattr(connection, "_owed", None)
        self._owed: _Owed = parent if isinstance(parent, _Owed) else _Owed()

    def _in_transaction(self) -> TransactionContext:
        return NestedTransactionContext(_TransactionWrapper(self))

    def defer_next_insert(self, defer: bool) -> None:
        """The next ``execute_insert`` waits for the next statement or the commit."""
        self._owed.defer_next = defer

    def defer_next_update(self, stale: BaseException | None) -> None:
        """The next ``execute_query`` (an UPDATE of one row) waits for the next statement or
        the commit, where ``stale`` is raised if it changed no row."""
        self._owed.defer_update = stale

    async def _call(
        self, connection: aiosqlite.Connection, call: Callable[..., T], *args: Any
    ) -> T:
        """``call(*args)`` on the SQLite thread, after what the transaction owes, one trip."""
        run: Callable[..., Awaitable[T]] = connection._execute  # aiosqlite's queue to its thread
        begin, writes = self._owed.take()
        if begin or writes:
            return await run(_then, connection._conn, begin, writes, call, *args)
        return await run(call, *args)

    async def _statement(self, sql: str) -> None:
        await self._call(self._connection, _statement, self._connection._conn, sql)

    # -- the transaction ---------------------------------------------------------------------

    async def begin(self) -> None:
        # Autocommit mode (isolation_level=None) never has an implicit transaction to end.
        self._owed.begin = True

    async def commit(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._finalized = True
        begin, writes = self._owed.take()
        if begin and not writes:
            return  # nothing ran: nothing to commit
        run: Callable[..., Awaitable[None]] = self._connection._execute
        try:
            await run(_finish, self._connection._conn, begin, writes)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(exc) from exc
        except sqlite3.OperationalError as exc:
            raise OperationalError(exc) from exc

    async def rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._finalized = True
        begin, _unsent = self._owed.take()
        if begin:
            return  # nothing ran: nothing to roll back
        await self._connection.rollback()

    async def savepoint(self) -> None:
        self._savepoint = f"kunpay_sp_{id(self):x}"
        await self._statement(f"SAVEPOINT {self._savepoint}")

    async def savepoint_rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to rollback to")
        self._owed.writes.clear()  # put off inside the savepoint: rolled back unsent
        await self._statement(f"ROLLBACK TO {self._savepoint}")
        self._savepoint = None
        self._finalized = True

    async def release_savepoint(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to release")
        await self._statement(f"RELEASE {self._savepoint}")
        self._savepoint = None
        self._finalized = True

    # -- statements (as SqliteClient runs them, through _call) -------------------------------

    @translate_exceptions
    async def execute_insert(self, query: str, values: list[Any]) -> int:
        if self._owed.defer_next:
            self._owed.defer_next = False
            self._owed.writes.append((query, list(values), None))
            # No id yet: Tortoise leaves a generated primary key unset (kunpay's db.add).
            return None  # type: ignore[return-value]
        async with self.acquire_connection() as connection:
            self.log.debug("%s: %s", query, values)
            row = await self._call(connection, connection._execute_insert, query, values)
            return int(row[0]) if row is not None else 0

    @translate_exceptions
    async def execute_query(
        self, query: str, values: list[Any] | None = None
    ) -> tuple[int, Sequence[dict[str, Any]]]:
        query = query.replace("\x00", "'||CHAR(0)||'")
        stale, self._owed.defer_update = self._owed.defer_update, None
        if stale is not None:
            self.log.debug("%s: %s (deferred)", query, values)
            self._owed.writes.append((query, list(values or []), stale))
            return 1, []  # as it must be: else ``stale`` is raised when it runs
        async with self.acquire_connection() as connection:
            self.log.debug("%s: %s", query, values)
            return await self._call(
                connection, _changes_and_rows, connection._conn, query, values or []
            )

    @translate_exceptions
    async def execute_query_dict(
        self, query: str, values: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        query = query.replace("\x00", "'||CHAR(0)||'")
        async with self.acquire_connection() as connection:
            self.log.debug("%s: %s", query, values)
            rows = await self._call(connection, connection._execute_fetchall, query, values or [])
            return list(map(dict, rows))

    async def _caught_up(self) -> None:
        """Send what is owed on its own, before a statement that cannot take it along."""
        if self._owed.begin or self._owed.writes:
            await self._call(self._connection, _catch_up, self._connection._conn, False, [])

    async def execute_many(self, query: str, values: list[list[Any]]) -> None:
        await self._caught_up()
        await super().execute_many(query, values)

    async def execute_script(self, query: str) -> None:
        await self._caught_up()
        await super().execute_script(query)


client_class = KunpaySqliteClient
