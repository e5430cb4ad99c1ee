"""Tortoise's SQLite client, with fewer trips to the SQLite thread per DB transaction.

aiosqlite runs every statement on its own thread, and the worker's event loop resumes the
caller after each one. Tortoise holds SQLite's single connection for the whole of a DB
transaction, so every trip inside one is time nobody else can use the database: on a busy
worker that convoy, not SQLite, limits throughput (README, Performance). Tortoise's
transactions open with two trips (a ``commit()`` that does nothing in autocommit mode, then
``BEGIN``). Here ``BEGIN`` goes with the transaction's first statement, in the same trip,
and a transaction that ran no statement costs none.

Nothing else changes: the statements, their order, the connection lock and the error
translation are Tortoise's. ``Settings.tortoise_config`` names this module as the engine of
``sqlite://`` URLs.
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

__all__ = ["KunpaySqliteClient", "client_class"]

T = TypeVar("T")


class _Begin:
    """Whether the DB transaction still owes its ``BEGIN`` (shared with nested savepoints)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = False


def _begin_then(conn: sqlite3.Connection, call: Callable[..., T], *args: Any) -> T:
    # On the SQLite thread: both in one trip.
    conn.execute("BEGIN")
    return call(*args)


class KunpaySqliteClient(SqliteClient):
    def _in_transaction(self) -> TransactionContext:
        return SqliteTransactionContext(_TransactionWrapper(self), self._lock)


class _TransactionWrapper(SqliteTransactionWrapper):
    def __init__(self, connection: SqliteClient) -> None:
        super().__init__(connection)
        parent_begin = getattr(connection, "_begin", None)
        self._begin: _Begin = parent_begin if isinstance(parent_begin, _Begin) else _Begin()

    def _in_transaction(self) -> TransactionContext:
        return NestedTransactionContext(_TransactionWrapper(self))

    async def _call(
        self, connection: aiosqlite.Connection, call: Callable[..., T], *args: Any
    ) -> T:
        """``call(*args)`` on the SQLite thread, after the owed ``BEGIN`` if there is one."""
        run: Callable[..., Awaitable[T]] = connection._execute  # aiosqlite's queue to its thread
        if self._begin.pending:
            self._begin.pending = False  # a failed BEGIN leaves no transaction to roll back
            return await run(_begin_then, connection._conn, call, *args)
        return await run(call, *args)

    async def _settle_begin(self) -> None:
        """The owed ``BEGIN`` on its own, before a statement that cannot take it along."""
        if self._begin.pending:
            self._begin.pending = False
            await self._connection.execute("BEGIN")

    # -- the transaction ---------------------------------------------------------------------

    async def begin(self) -> None:
        # Autocommit mode (isolation_level=None) never has an implicit transaction to end.
        self._begin.pending = True

    async def commit(self) -> None:
        if self._begin.pending:
            self._begin.pending = False
            self._finalized = True  # nothing ran: nothing to commit
            return
        await super().commit()

    async def rollback(self) -> None:
        if self._begin.pending:
            self._begin.pending = False
            self._finalized = True
            return
        await super().rollback()

    async def savepoint(self) -> None:
        await self._settle_begin()
        await super().savepoint()

    # -- statements (as SqliteClient runs them, through _call) -------------------------------

    @translate_exceptions
    async def execute_insert(self, query: str, values: list[Any]) -> int:
        async with self.acquire_connection() as connection:
            self.log.debug("%s: %s", query, values)
            row = await self._call(connection, connection._execute_insert, query, values)
            return int(row[0])

    @translate_exceptions
    async def execute_query(
        self, query: str, values: list[Any] | None = None
    ) -> tuple[int, Sequence[dict[str, Any]]]:
        query = query.replace("\x00", "'||CHAR(0)||'")
        async with self.acquire_connection() as connection:
            self.log.debug("%s: %s", query, values)
            start = connection.total_changes
            rows = await self._call(connection, connection._execute_fetchall, query, values or [])
            return (connection.total_changes - start) or len(rows), rows

    @translate_exceptions
    async def execute_query_dict(
        self, query: str, values: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        query = query.replace("\x00", "'||CHAR(0)||'")
        async with self.acquire_connection() as connection:
            self.log.debug("%s: %s", query, values)
            rows = await self._call(connection, connection._execute_fetchall, query, values or [])
            return list(map(dict, rows))

    async def execute_many(self, query: str, values: list[list[Any]]) -> None:
        await self._settle_begin()
        await super().execute_many(query, values)

    async def execute_script(self, query: str) -> None:
        await self._settle_begin()
        await super().execute_script(query)


client_class = KunpaySqliteClient
