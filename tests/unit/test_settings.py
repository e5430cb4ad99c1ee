from __future__ import annotations

import pytest
from pydantic import ValidationError

from kunpay_worker.settings import Settings


def test_nested_settings_and_json_lists_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUNPAY_MTN_MOMO__COLLECTION__API_KEY", "s3cret")
    monkeypatch.setenv("KUNPAY_MTN_MOMO__TARGET_ENVIRONMENT", "mtncameroon")
    monkeypatch.setenv("KUNPAY_POLL__DELAYS", "[0.5, 1]")
    monkeypatch.setenv("KUNPAY_PROVIDERS", '{"MTN_CAMEROON": "MTN_MOMO"}')
    settings = Settings()
    assert settings.mtn_momo.collection.api_key is not None
    assert settings.mtn_momo.collection.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.mtn_momo.target_environment == "mtncameroon"
    assert settings.poll.delays == [0.5, 1]


def test_the_defaults_are_sqlite_and_the_old_packages_poll_schedule() -> None:
    settings = Settings()
    assert settings.database_url.get_secret_value() == "sqlite://kunpay.sqlite3"
    assert settings.poll.delays == [15, 30, 60, 120, 240, 480]


@pytest.mark.parametrize(
    "providers",
    ['{"MTN": "MTN_MOMO"}', '{"MTN_CAMEROON": "NOT_A_BACKEND"}'],
)
def test_unknown_provider_keys_or_backends_are_refused(
    monkeypatch: pytest.MonkeyPatch, providers: str
) -> None:
    monkeypatch.setenv("KUNPAY_PROVIDERS", providers)
    with pytest.raises(ValidationError):
        Settings()


def test_a_send_lease_shorter_than_a_provider_call_is_refused() -> None:
    with pytest.raises(ValidationError, match="send_lease"):
        Settings(send_lease=10, http={"total_timeout": 30})  # type: ignore[arg-type]


def test_postgres_gets_a_pool_sized_for_the_worker() -> None:
    settings = Settings(database_url="postgres://u@h/db", database_pool_size=25)  # type: ignore[arg-type]
    config = settings.tortoise_config()["connections"]["default"]  # type: ignore[index]
    assert config["credentials"]["maxsize"] == "25"
    assert config["credentials"]["host"] == "h"


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("postgres://u@h/db", "kunpay_worker.storage.postgres"),
        ("postgresql://u:p@h:5433/db?maxsize=3", "kunpay_worker.storage.postgres"),
        ("asyncpg://u@h/db", "kunpay_worker.storage.postgres"),
        ("sqlite://kunpay.sqlite3", "kunpay_worker.storage.sqlite"),
    ],
)
def test_each_database_gets_kunpays_tortoise_client(url: str, engine: str) -> None:
    config = Settings(database_url=url).tortoise_config()["connections"]["default"]  # type: ignore[arg-type, index]
    assert config["engine"] == engine


def test_negative_poll_delays_are_refused() -> None:
    with pytest.raises(ValidationError, match="positive"):
        Settings(poll={"delays": [1, -1]})  # type: ignore[arg-type]
