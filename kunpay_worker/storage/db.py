"""Opening the database, and the built-in Tortoise migrations."""

from __future__ import annotations

from collections.abc import Callable

from tortoise import Tortoise, connections
from tortoise.migrations.api import migrate as tortoise_migrate
from tortoise.migrations.executor import MigrationExecutor

from kunpay_worker.settings import Settings

__all__ = ["close", "init", "migrate", "pending_migrations"]


async def init(settings: Settings) -> None:
    await Tortoise.init(config=settings.tortoise_config())


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
