"""Tortoise's SQLite client, with fewer trips to the SQLite thread per DB transaction.

aiosqlite runs every statement on its own thread, and the worker's event loop resumes the
caller after each one. Tortoise holds SQLite's single connection for the whole of a DB
transaction, so every trip inside one is time nobody else can use the database: on a busy
worker that convoy, not SQLite, limits throughput (README, Performance). So:

* ``BEGIN`` goes with the transaction's first statement, in the same trip (Tortoise's own
  client spends two trips on it: a ``commit()`` that does nothing in autocommit mode, then
  ``BEGIN``), and a transaction that ran nothing costs none;
* an INSERT made through :func:`kunpay_worker.storage.db.add` (one whose caller needs no
  generated id), and an UPDATE of one row made through :func:`kunpay_worker.storage.db.
  update_one` (a compare-and-set whose caller goes on as if it held), wait for the
  transaction's next statement or its ``COMMIT`` and go in the same trip, in order. An error
  one meets (a duplicate key; the UPDATE's exception when it changed no row) is raised there,
  and the transaction is rolled back as for any error (the writes after it were not sent: its
  commit raises the error again even if the caller caught it);
* the connection's lock is taken at the transaction's first trip, not on entering it;
* a transaction that reaches its ``COMMIT`` without a trip (every statement put off: the
  intake of a payment, the record of a send or of a check's final answer) takes no lock of
  its own: it commits in a group with the others that came meanwhile, one trip and one
  ``COMMIT`` (one fsync) for all, each inside its own savepoint so that its error fails it
  alone (:class:`_GroupCommit`). Its ``commit()`` returns once the group is durable.

The statements, their order and the error translation are Tortoise's.
``Settings.tortoise_config`` names this module as the engine of ``sqlite://`` URLs.
"""

from __future__ import annotations

import asyncio
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
from tortoise.connection import get_connections
from tortoise.exceptions import IntegrityError, OperationalError, TransactionManagementError

__all__ = ["KunpaySqliteClient", "client_class"]

T = TypeVar("T")
# A statement put off: its SQL, its values, and for an UPDATE of one row, what to raise when it
# changes none.
Write = tuple[str, list[Any], BaseException | None]


class _Owed:
    """What the DB transaction has not sent yet: its ``BEGIN`` and the INSERTs put off.
    Shared by the transaction and the savepoints nested in it."""

    __slots__ = (
        "begin",
        "defer_next",
        "defer_update",
        "doomed",
        "group",
        "held",
        "lock",
        "writes",
    )

    def __init__(self, lock: asyncio.Lock, group: _GroupCommit) -> None:
        self.begin = False
        self.writes: list[Write] = []
        self.defer_next = False
        self.defer_update: BaseException | None = None
        # A write put off that failed on its way, the writes after it unsent: even if its
        # caller caught the error, the commit rolls back and raises it.
        self.doomed: BaseException | None = None
        self.lock = lock  # the connection's: one DB transaction on it at a time
        self.held = False
        self.group = group

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


class _PutOff(Exception):
    """What a write put off met, on its way with another statement."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _then(
    conn: sqlite3.Connection, begin: bool, writes: list[Write], call: Callable[..., T], *args: Any
) -> T:
    try:
        _catch_up(conn, begin, writes)
    except Exception as exc:
        raise _PutOff(exc) from exc
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


def _commit_group(conn: sqlite3.Connection, group: list[list[Write]]) -> list[Exception | None]:
    """Several DB transactions' statements in one SQLite transaction, each inside its own
    savepoint: one that fails (a duplicate key, a stale UPDATE) is rolled back alone, and its
    error is returned in its place. One COMMIT (one fsync) for all."""
    errors: list[Exception | None] = []
    try:
        conn.execute("BEGIN")
        for writes in group:
            conn.execute("SAVEPOINT kunpay_group")
            try:
                _catch_up(conn, False, writes)
            except Exception as exc:  # noqa: BLE001 - handed to the transaction it belongs to
                conn.execute("ROLLBACK TO kunpay_group")
                errors.append(exc)
            else:
                errors.append(None)
            conn.execute("RELEASE kunpay_group")
        conn.commit()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return errors


def _translated(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(exc)
    if isinstance(exc, sqlite3.OperationalError):
        return OperationalError(exc)
    return exc


class _GroupCommit:
    """Commits of DB transactions that ran nothing before their commit (every statement was
    put off), taken together: those that come while one group is on the SQLite thread go
    in the next, under the connection's lock, in one trip and with one COMMIT. Each commit
    returns once its group is durable; one transaction's error fails that transaction only."""

    def __init__(self, client: KunpaySqliteClient) -> None:
        self._client = client
        self._waiting: list[tuple[list[Write], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, writes: list[Write]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((writes, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        group: list[tuple[list[Write], asyncio.Future[None]]] = []
        try:
            while self._waiting:
                async with self._client._lock:
                    # A caller cancelled before its group left has committed nothing.
                    group = [(w, done) for w, done in self._waiting if not done.done()]
                    self._waiting = []
                    if not group:
                        continue
                    connection = self._client._connection
                    assert connection is not None  # noqa: S101 - connected on entering
                    run: Callable[..., Awaitable[list[Exception | None]]] = connection._execute
                    try:
                        errors = await run(_commit_group, connection._conn, [w for w, _ in group])
                    except (sqlite3.Error, OSError, ValueError) as exc:
                        errors = [exc] * len(group)  # the group's COMMIT failed: and each of them
                for (_, done), error in zip(group, errors, strict=True):
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(_translated(error))
                group = []
        finally:
            self._flusher = None
            # Interrupted (the worker is stopping): whether the group committed is unknown.
            for _, done in [*group, *self._waiting]:
                if not done.done():
                    done.set_exception(OperationalError("commit interrupted; outcome unknown"))
            self._waiting = []


class KunpaySqliteClient(SqliteClient):
    def __init__(self, file_path: str, **kwargs: Any) -> None:
        super().__init__(file_path, **kwargs)
        self._group = _GroupCommit(self)

    def _in_transaction(self) -> TransactionContext:
        return _TransactionContext(_TransactionWrapper(self))


class _TransactionContext(SqliteTransactionContext):
    """Tortoise's, but the connection's lock is taken at the transaction's first trip to the
    SQLite thread (with its BEGIN), not on entry, and released on exit. Until then the
    transaction has run nothing: the work before it (building rows put off until the commit)
    holds up nobody, and a transaction whose every statement is put off holds the connection
    for one trip."""

    connection: _TransactionWrapper

    def __init__(self, connection: _TransactionWrapper) -> None:
        super().__init__(connection, connection._owed.lock)

    async def __aenter__(self) -> _TransactionWrapper:
        if not self.connection._connection:  # not connected yet: connect under the lock
            await self.connection._hold()
            await self.ensure_connection()
        self.token = get_connections().set(self.connection_name, self.connection)
        await self.connection.begin()
        return self.connection

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        try:
            if not self.connection._finalized:
                if exc_type:
                    if exc_type is not TransactionManagementError:
                        await self.connection.rollback()
                else:
                    await self.connection.commit()
        finally:
            get_connections().reset(self.token)
            self.connection._let_go()


class _TransactionWrapper(SqliteTransactionWrapper):
    def __init__(self, connection: SqliteClient) -> None:
        super().__init__(connection)
        parent = getattr(connection, "_owed", None)
        if isinstance(parent, _Owed):
            self._owed = parent
        else:
            assert isinstance(connection, KunpaySqliteClient)  # noqa: S101 - _in_transaction's
            self._owed = _Owed(connection._lock, connection._group)
        self._doomed_before: BaseException | None = None

    async def _hold(self) -> None:
        """Take the connection's lock before the transaction's first trip."""
        if not self._owed.held:
            await self._owed.lock.acquire()
            self._owed.held = True

    def _let_go(self) -> None:
        if self._owed.held:
            self._owed.held = False
            self._owed.lock.release()

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
        await self._hold()
        begin, writes = self._owed.take()
        if begin or writes:
            try:
                return await run(_then, connection._conn, begin, writes, call, *args)
            except _PutOff as put_off:
                self._owed.doomed = put_off.error
                raise put_off.error from None
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
        if begin and not self._owed.held:
            # Nothing ran yet, so nothing holds the connection: commit with the others.
            await self._owed.group.commit(writes)
            return
        run: Callable[..., Awaitable[None]] = self._connection._execute
        await self._hold()
        if self._owed.doomed is not None:
            await self._connection.rollback()
            raise _translated(self._owed.doomed)
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
        await self._hold()
        await self._connection.rollback()

    async def savepoint(self) -> None:
        self._savepoint = f"kunpay_sp_{id(self):x}"
        await self._statement(f"SAVEPOINT {self._savepoint}")
        self._doomed_before = self._owed.doomed

    async def savepoint_rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to rollback to")
        self._owed.writes.clear()  # put off inside the savepoint: rolled back unsent
        self._owed.doomed = self._doomed_before  # what failed inside it is undone with it
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
        await self._hold()
        await super().execute_many(query, values)

    async def execute_script(self, query: str) -> None:
        await self._caught_up()
        await self._hold()
        await super().execute_script(query)


client_class = KunpaySqliteClient
