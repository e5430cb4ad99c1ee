"""Tortoise's asyncpg client, with fewer round trips to PostgreSQL per DB transaction.

asyncpg sends one statement per round trip, and each costs the worker an event-loop wake-up
and PostgreSQL a protocol exchange: Tortoise's own client spends ``BEGIN``, one trip per
statement and ``COMMIT``, six trips for the intake of a payment. So:

* ``BEGIN`` waits for the transaction's first statement that is not put off, and a transaction
  that ran nothing costs no trip;
* an INSERT made through :func:`kunpay_worker.storage.db.add` (one whose caller needs no
  generated id), and an UPDATE of one row made through :func:`kunpay_worker.storage.db.
  update_one` (a compare-and-set whose caller goes on as if it held), wait for the
  transaction's next statement or its ``COMMIT``; then they go together as ONE statement,
  each a data-modifying ``WITH`` query of it (:func:`_combined`). An error one meets (a
  duplicate key; the UPDATE's exception when it changed no row) is raised there, and the
  transaction rolls back as for any error;
* a transaction that reaches its ``COMMIT`` with every statement put off (the intake of a
  payment, the record of a send or of a check's final answer) never sends ``BEGIN``: that one
  statement is its own transaction (PostgreSQL runs a statement outside ``BEGIN`` atomically),
  one trip in all.

A single statement of several ``WITH`` queries differs from the same statements in a row in two
ways. Its queries all see the database as it was when it started, so :func:`_combined` declines
(they are then sent one by one) when an UPDATE or DELETE shares its table with another write.
And PostgreSQL runs the queries nobody reads last first, so the statement reads each in turn:
they run in the order they were made, drawing ids and meeting errors as they would one by one.
Foreign keys are checked at the end of the statement, so a row may refer to one inserted by a
query beside it.

A transaction's COMMIT that PostgreSQL answers with ROLLBACK (a statement in it failed and the
caller caught the error) raises rather than passing for a commit.

asyncpg also resets a connection each time it returns to the pool: it rolls back a transaction
left open, then runs ``Connection.get_reset_query()`` — by default ``SELECT
pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, one more round trip after every
query made outside a transaction. kunpay never takes advisory locks, declares cursors outside a
transaction, listens or changes session settings (the server settings are fixed at connect),
so there is nothing for that query to undo; asyncpg's documented way to change it is a
``Connection`` subclass. The rollback of an open transaction stays.

``Settings.tortoise_config`` names this module as the engine of PostgreSQL URLs.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from tortoise.backends.asyncpg.client import AsyncpgDBClient, TransactionWrapper
from tortoise.backends.base.client import (
    NestedTransactionContext,
    TransactionContext,
    TransactionContextPooled,
)
from tortoise.exceptions import IntegrityError, OperationalError, TransactionManagementError

__all__ = ["KunpayAsyncpgClient", "KunpayConnection", "client_class"]

# A statement put off: its SQL, its values, and for an UPDATE of one row, what to raise when it
# changes none.
Write = tuple[str, list[Any], BaseException | None]

_PARAM = re.compile(r"\$(\d+)")
_TARGET = re.compile(r'\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"([^"]+)"', re.IGNORECASE)
_RETURNING = re.compile(r"\s+RETURNING\s+[^()]*$", re.IGNORECASE)
# What the combined statement casts to an integer when the UPDATE it names changed no row, to
# fail the statement (and so undo all of it) with an error that says which one. The server's
# message is in its own language (lc_messages) and quotes the value its own way.
_STALE = re.compile(r"kunpay-stale-(\d+)/")
# What a ROLLBACK on its way out may meet: the error that made it roll back is the one to raise.
_GONE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)
_CHECK = (
    "CASE WHEN (SELECT count(*) FROM w{n}) = 1 THEN 0"
    " ELSE ('kunpay-stale-{n}/' || (SELECT count(*) FROM w{n}))::int END"
)
# PostgreSQL runs a data-modifying WITH query when the statement first reads it, and the ones
# never read after all the others, last first: reading each, in order, runs them in order (the
# ids they draw, the error met first).
_RAN = "(SELECT count(*) FROM w{n})"


class KunpayConnection(asyncpg.Connection):  # type: ignore[misc]
    def get_reset_query(self) -> str:
        return ""  # an open transaction is still rolled back (asyncpg's Connection.reset)


class KunpayAsyncpgClient(AsyncpgDBClient):
    connection_class = KunpayConnection

    def _in_transaction(self) -> TransactionContext:
        return TransactionContextPooled(_TransactionWrapper(self), self._pool_init_lock)


def _combined(writes: Sequence[Write]) -> tuple[str, list[Any]] | None:
    """``writes`` as one statement, each a ``WITH`` query, or None where that could differ from
    running them in a row (see the module's docstring) or the SQL is not as Tortoise writes it.
    The statement fails, and so changes nothing, when an UPDATE with an exception changed a
    number of rows other than one: its error names that UPDATE (:func:`_stale`)."""
    shape = tuple((query, len(values), stale is not None) for query, values, stale in writes)
    sql = _shapes.get(shape, "")
    if sql == "":
        if len(_shapes) >= _SHAPES_KEPT:
            _shapes.clear()
        sql = _shapes[shape] = _combine(shape)
    if sql is None:
        return None
    return sql, [value for _, values, _ in writes for value in values]


_SHAPES_KEPT = 256
# The combined SQL of each list of statements seen (None: not combined), by their SQL, number
# of values and whether each counts its rows: a worker sends a handful of shapes.
_shapes: dict[tuple[tuple[str, int, bool], ...], str | None] = {}


def _combine(shape: tuple[tuple[str, int, bool], ...]) -> str | None:
    parts: list[str] = []
    checks: list[str] = []
    written: dict[str, list[str]] = {}
    offset = 0
    for number, (query, count, counted) in enumerate(shape, 1):
        target = _TARGET.match(query)
        if target is None or "'" in query or ";" in query:
            return None  # not a plain write with its values all parameters
        written.setdefault(target.group(2), []).append(target.group(1).split()[0].upper())
        if {int(n) for n in _PARAM.findall(query)} != set(range(1, count + 1)):
            return None

        def renumbered(found: re.Match[str], offset: int = offset) -> str:
            return f"${int(found.group(1)) + offset}"

        sql = _RETURNING.sub("", _PARAM.sub(renumbered, query.strip()))
        parts.append(f"w{number} AS ({sql} RETURNING 1)")
        checks.append((_CHECK if counted else _RAN).format(n=number))
        offset += count
    for verbs in written.values():
        if len(verbs) > 1 and any(verb != "INSERT" for verb in verbs):
            return None  # an UPDATE would not see the other write of its table
    return f"WITH {', '.join(parts)} SELECT {', '.join(checks)}"


def _stale(exc: BaseException, writes: Sequence[Write]) -> BaseException | None:
    """The exception of the UPDATE that failed a combined statement, if that is what
    ``exc`` says."""
    if not isinstance(exc, asyncpg.exceptions.InvalidTextRepresentationError):
        return None
    found = _STALE.search(str(exc))
    if found is None:
        return None
    number = int(found.group(1))
    return writes[number - 1][2] if 0 < number <= len(writes) else None


def _translated(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(exc)
    if isinstance(exc, asyncpg.SyntaxOrAccessError | asyncpg.exceptions.DataError):
        return OperationalError(exc)
    return exc


class _Owed:
    """What the DB transaction has not sent yet: its ``BEGIN`` and the writes put off. Shared
    by the transaction and the savepoints nested in it."""

    __slots__ = ("begin", "defer_next", "defer_update", "doomed", "writes")

    def __init__(self) -> None:
        self.begin = False
        self.writes: list[Write] = []
        self.defer_next = False
        self.defer_update: BaseException | None = None
        # A compare-and-set sent on its own that changed no row: PostgreSQL saw no error, so
        # the commit rolls back and raises it (the writes after it in its batch were not sent).
        self.doomed: BaseException | None = None

    def take(self) -> tuple[bool, list[Write]]:
        begin, writes = self.begin, self.writes
        self.begin, self.writes = False, []
        return begin, writes


class _TransactionWrapper(TransactionWrapper):
    def __init__(self, connection: AsyncpgDBClient) -> None:
        super().__init__(connection)
        parent = getattr(connection, "_owed", None)
        self._owed: _Owed = parent if isinstance(parent, _Owed) else _Owed()
        self._savepoint: str | None = None
        self._doomed_before: BaseException | None = None

    def _in_transaction(self) -> TransactionContext:
        return NestedTransactionContext(_TransactionWrapper(self))

    def defer_next_insert(self, defer: bool) -> None:
        """The next ``execute_insert`` waits for the next statement or the commit."""
        self._owed.defer_next = defer

    def defer_next_update(self, stale: BaseException | None) -> None:
        """The next ``execute_query`` (an UPDATE of one row) waits for the next statement or
        the commit, where ``stale`` is raised if it changed no row."""
        self._owed.defer_update = stale

    # -- sending what is owed ----------------------------------------------------------------

    async def _send(self, writes: list[Write]) -> None:
        """The writes put off, as one statement where that is the same, else one by one
        inside the transaction, which must have begun then."""
        connection = self._connection
        combined = _combined(writes)
        if combined is None:
            for query, values, stale in writes:
                try:
                    status = await connection.execute(query, *values)
                except asyncpg.PostgresError as exc:
                    raise _translated(exc) from exc
                if stale is not None and _rows(status) != 1:
                    self._owed.doomed = stale
                    raise stale
            return
        query, values = combined
        try:
            await connection.fetch(query, *values)
        except asyncpg.PostgresError as exc:
            stale = _stale(exc, writes)
            if stale is not None:
                raise stale from None
            raise _translated(exc) from exc

    async def _caught_up(self) -> None:
        """Send what is owed, before a statement that must come after it."""
        begin, writes = self._owed.take()
        if not (begin or writes):
            return
        async with self._lock:  # Tortoise's: one statement at a time on the connection
            if begin:
                await self._connection.execute("BEGIN")
            if writes:
                await self._send(writes)  # one statement or several: inside the transaction

    # -- the transaction ---------------------------------------------------------------------

    async def begin(self) -> None:
        self._owed.begin = True

    async def commit(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._finalized = True
        begin, writes = self._owed.take()
        async with self._lock:
            if begin:
                if not writes:
                    return  # nothing ran: nothing to commit
                if _combined(writes) is not None:
                    # Nothing ran yet: the writes, as one statement, are the whole transaction.
                    await self._send(writes)
                    return
                await self._connection.execute("BEGIN")
            try:
                await self._finish(writes)
            except BaseException:
                await self._abandon()
                raise

    async def _finish(self, writes: list[Write]) -> None:
        """The last writes put off, then COMMIT, in a transaction that has begun."""
        if writes:
            await self._send(writes)
        if self._owed.doomed is not None:
            raise self._owed.doomed
        if await self._connection.execute("COMMIT") != "COMMIT":
            # PostgreSQL ends a transaction in which a statement failed with a ROLLBACK whatever
            # it is told: that statement's error was caught, and nothing was written.
            raise TransactionManagementError(
                "the transaction was rolled back: a statement in it failed"
            )

    async def _abandon(self) -> None:
        """Roll back what this transaction sent, if the connection still holds it."""
        connection = self._connection
        if not connection.is_closed() and connection.is_in_transaction():
            try:
                await connection.execute("ROLLBACK")
            except _GONE:
                pass  # asyncpg's reset rolls it back as the connection goes back to the pool

    async def rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._finalized = True
        self._owed.take()  # put off: rolled back unsent
        await self._abandon()

    async def savepoint(self) -> None:
        await self._caught_up()
        self._doomed_before = self._owed.doomed
        self._savepoint = f"kunpay_sp_{id(self):x}"
        await self._connection.execute(f"SAVEPOINT {self._savepoint}")

    async def savepoint_rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to rollback to")
        self._owed.writes.clear()  # put off inside the savepoint: rolled back unsent
        self._owed.doomed = self._doomed_before  # what failed inside it is undone with it
        self._finalized = True
        with contextlib.suppress(*_GONE):  # else the error that led here would be hidden
            await self._connection.execute(f"ROLLBACK TO SAVEPOINT {self._savepoint}")
        self._savepoint = None

    async def release_savepoint(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to release")
        self._finalized = True
        try:
            await self._caught_up()  # a write put off inside it fails the savepoint alone
        except BaseException:
            with contextlib.suppress(*_GONE):  # else the outer transaction fails next
                await self._connection.execute(f"ROLLBACK TO SAVEPOINT {self._savepoint}")
            raise
        await self._connection.execute(f"RELEASE SAVEPOINT {self._savepoint}")
        self._savepoint = None

    # -- statements (Tortoise's, after what is owed) -----------------------------------------

    async def execute_insert(self, query: str, values: list[Any]) -> Any:
        if self._owed.defer_next:
            self._owed.defer_next = False
            self.log.debug("%s: %s (deferred)", query, values)
            self._owed.writes.append((query, list(values), None))
            # No id yet: Tortoise leaves a generated primary key unset (kunpay's db.add).
            return None
        await self._caught_up()
        return await super().execute_insert(query, values)

    async def execute_query(
        self, query: str, values: list[Any] | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        stale, self._owed.defer_update = self._owed.defer_update, None
        if stale is not None:
            self.log.debug("%s: %s (deferred)", query, values)
            self._owed.writes.append((query, list(values or []), stale))
            return 1, []  # as it must be: else ``stale`` is raised when it runs
        await self._caught_up()
        result: tuple[int, list[dict[str, Any]]] = await super().execute_query(query, values)
        return result

    async def execute_query_dict(
        self, query: str, values: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        await self._caught_up()
        rows: list[dict[str, Any]] = await super().execute_query_dict(query, values)
        return rows

    async def execute_many(self, query: str, values: list[Any]) -> None:
        await self._caught_up()
        await super().execute_many(query, values)

    async def execute_script(self, query: str) -> None:
        await self._caught_up()
        await super().execute_script(query)


def _rows(status: str) -> int:
    """The row count of a command tag (``UPDATE 1``)."""
    try:
        return int(status.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


client_class = KunpayAsyncpgClient
