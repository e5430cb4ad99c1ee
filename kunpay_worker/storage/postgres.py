"""Tortoise's asyncpg client, with connections that go back to the pool in one step.

asyncpg resets a connection each time it returns to the pool: it rolls back a transaction
left open (a task cancelled inside one), then runs ``Connection.get_reset_query()`` — by
default ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` — one more
round trip to PostgreSQL after every query made outside a transaction, about six per payment.
kunpay never takes advisory locks, declares cursors outside a transaction, listens or changes
session settings (the server settings are fixed at connect), so there is nothing for that query
to undo. asyncpg's documented way to change it is a ``Connection`` subclass; the rollback of
an open transaction stays. ``Settings.tortoise_config`` names this module as the engine of
PostgreSQL URLs.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
from tortoise.backends.asyncpg.client import AsyncpgDBClient

__all__ = ["KunpayAsyncpgClient", "KunpayConnection", "client_class"]


class KunpayConnection(asyncpg.Connection):  # type: ignore[misc]
    def get_reset_query(self) -> str:
        return ""  # an open transaction is still rolled back (asyncpg's Connection.reset)


class KunpayAsyncpgClient(AsyncpgDBClient):
    connection_class = KunpayConnection


client_class = KunpayAsyncpgClient
