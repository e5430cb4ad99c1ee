"""The committed migrations must describe the models exactly."""

from __future__ import annotations

from pathlib import Path

from tortoise import Tortoise
from tortoise.migrations.autodetector import MigrationAutodetector

from kunpay_worker.settings import Settings


async def test_models_and_migrations_agree(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite://{tmp_path / 'm.sqlite3'}")  # type: ignore[arg-type]
    config = settings.tortoise_config()
    await Tortoise.init(config=config, init_connections=False)
    try:
        apps = config["apps"]
        assert isinstance(apps, dict)
        assert Tortoise.apps is not None
        changes = await MigrationAutodetector(Tortoise.apps, apps).changes()
        described = [[repr(op) for op in w.operations] for w in changes]
        assert not changes, f"models changed without a migration (makemigrations): {described}"
    finally:
        await Tortoise.close_connections()
