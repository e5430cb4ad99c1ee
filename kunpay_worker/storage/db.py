"""Opening the database, and the built-in Tortoise migrations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from tortoise import Model, Tortoise, connections
from tortoise.backends.base.client import TransactionalDBClient, TransactionContextPooled
from tortoise.connection import get_connections
from tortoise.exceptions import DBConnectionError
from tortoise.migrations.api import migrate as tortoise_migrate
from tortoise.migrations.executor import MigrationExecutor
from tortoise.queryset import QuerySet

from kunpay_worker.settings import Settings

__all__ = [
    "add",
    "close",
    "init",
    "migrate",
    "pending_migrations",
    "unavailable",
    "update_one",
]

# The database could not be reached or dropped the connection (restarting, failing over).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    DBConnectionError,
    asyncpg.exceptions.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InterfaceError,  # the connection is closed
    # Seen only while PostgreSQL restarts: a pooled connection the server dropped mid-operation
    # is still marked busy ("cannot switch to state ...; another operation is in progress").
    asyncpg.exceptions.InternalClientError,
)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database is away for now: a loop that meets
    it logs a warning and tries again, and an error in the log keeps meaning a bug."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _UNAVAILABLE):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def add(row: Model) -> None:
    """INSERT ``row`` in the current DB transaction, for a caller that needs no id the database
    generates (the row's generated primary key stays unset).

    Inside a DB transaction the INSERT waits for the transaction's next statement or its
    COMMIT and goes with it: in the same trip to the SQLite thread
    (kunpay_worker/storage/sqlite.py), or with the other writes put off as one statement on
    PostgreSQL (kunpay_worker/storage/postgres.py). An error it meets (a duplicate key) is
    raised there; the transaction rolls back either way. Outside one it runs now."""
    client = connections.get(row._meta.default_connection or "default")
    defer = getattr(client, "defer_next_insert", None)
    if defer is None:
        await row.save(force_create=True)
        return
    defer(True)
    try:
        await row.save(using_db=client, force_create=True)
    finally:
        defer(False)


async def update_one(query: QuerySet[Any], stale: BaseException, **values: Any) -> None:
    """UPDATE the one row ``query`` selects, in the current DB transaction, or raise ``stale``
    when it selects none (a compare-and-set that lost).

    Inside a DB transaction the UPDATE waits for the transaction's next statement or its
    COMMIT and goes with it, as ``add`` does, and ``stale`` is raised there: the caller goes
    on as if the row was written, and the whole transaction rolls back if it was not. Outside
    one it runs now."""
    client = connections.get("default")
    defer = getattr(client, "defer_next_update", None)
    if defer is None:
        if await query.update(**values) != 1:
            raise stale
        return
    defer(stale)
    try:
        await query.using_db(client).update(**values)
    finally:
        defer(None)


async def init(settings: Settings) -> None:
    _undo_failed_begin()
    await Tortoise.init(config=settings.tortoise_config())


def _undo_failed_begin() -> None:
    """Make a pooled ``in_transaction()`` whose BEGIN fails leave nothing behind.

    Tortoise (1.1.x) acquires a pool connection and points the task's connection context at
    the new transaction *before* BEGIN; when BEGIN fails (PostgreSQL restarted: the pooled
    connection is dead), ``__aexit__`` never runs, so the connection is never released and the
    task keeps the dead transaction as its connection for good: a long-lived task (the outbox
    relay) then fails every pass until the worker restarts. This undoes both when entering
    fails. Found by the fault suite (tests/fault, PostgreSQL restarted)."""
    if getattr(TransactionContextPooled, "_kunpay_guarded", False):
        return
    enter = TransactionContextPooled.__aenter__

    async def guarded(self: TransactionContextPooled) -> TransactionalDBClient:
        try:
            return await enter(self)
        except BaseException:
            token = getattr(self, "token", None)
            if token is not None:  # the connection was acquired and the context pointed at it
                get_connections().reset(token)
                pool = self.client._parent._pool
                if pool is not None and self.client._connection is not None:
                    with contextlib.suppress(Exception):
                        await pool.release(self.client._connection)
            raise

    TransactionContextPooled.__aenter__ = guarded  # type: ignore[method-assign]
    TransactionContextPooled._kunpay_guarded = True  # type: ignore[attr-defined]


async def close() -> None:
    await Tortoise.close_connections()


async def pending_migrations(settings: Settings) -> list[str]:
    """Names of migrations not applied yet (needs ``init`` first)."""
    apps = settings.tortoise_config()["apps"]
    assert isinstance(apps, dict)  # noqa: S101
    executor = MigrationExecutor(connections.get("default"), apps)
    steps = await executor.plan(None)
    return [f"{s.migration.app_label}.{s.migration.name}" for s in steps if not s.backward]


async def migrate(
    settings: Settings, progress: Callable[[str, str, str], object] | None = None
) -> None:
    """Apply every pending migration, then leave the connections closed."""
    try:
        await tortoise_migrate(config=settings.tortoise_config(), progress=progress)
    finally:
        await Tortoise.close_connections()
