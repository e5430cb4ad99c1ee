"""Migrations upgrade a database that already holds data, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tortoise import Tortoise
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.migrations.api import migrate

from kunpay_worker.settings import Settings
from tests.integration.harness import Database

pytestmark = pytest.mark.integration

TRANSACTION = """
INSERT INTO transactions (
    id, app, type, operation, idempotency_key, fingerprint, command_id, provider, backend,
    amount, currency, phone_number, order_id, user_id, status, provider_reference, initiation,
    send_attempts, poll_seq, poll_count, event_seq, amount_refunded, amount_reserved,
    created_at, updated_at
) VALUES (
    '1b4e28ba-2fa1-41d2-883f-0016d3cca427', 'shop', 'collection', 'collect', 'k', 'f',
    '2b4e28ba-2fa1-41d2-883f-0016d3cca427', 'MTN_CAMEROON', 'MTN_MOMO', '5000', 'XAF',
    '+237670000000', 'o', 'u', 'COMPLETED', '3b4e28ba-2fa1-41d2-883f-0016d3cca427', 'SENT',
    1, 1, 1, 2, '0', '0', '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'
)
"""


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.create(request.param, tmp_path)
    EXECUTOR_CACHE.clear()
    try:
        yield database
    finally:
        await Tortoise.close_connections()
        EXECUTOR_CACHE.clear()
        await database.drop()


async def test_every_migration_applies_over_rows_of_the_first(database: Database) -> None:
    config = Settings(database_url=database.url).tortoise_config()  # type: ignore[arg-type]
    await migrate(config=config, target="kunpay.0001_initial")
    await Tortoise.get_connection("default").execute_query(TRANSACTION)
    await Tortoise.close_connections()

    await migrate(config=config)
    await Tortoise.close_connections()

    rows = await database.fetch(
        "SELECT needs_reconciliation, late_checks, provider_handle FROM transactions"
    )
    assert len(rows) == 1
    assert not rows[0]["needs_reconciliation"]
    assert rows[0]["late_checks"] == 0
    assert rows[0]["provider_handle"] is None
