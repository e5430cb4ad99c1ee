from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from kunpay_worker.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_schema_prints_the_json_schema_of_every_message() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schemas = json.loads(result.stdout)
    assert set(schemas) == {
        "CollectCommand",
        "DisburseCommand",
        "RefundCommand",
        "RetryCommand",
        "Event",
        "RpcRequest",
        "RpcReply",
    }
    assert "original_transaction_id" in schemas["RefundCommand"]["properties"]
    assert "schema_version" in schemas["Event"]["properties"]
    assert schemas["CollectCommand"]["properties"]["amount"]["anyOf"]


def test_run_refuses_to_start_without_provider_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SUBSCRIPTION_KEY", "API_USER", "API_KEY"):
        monkeypatch.delenv(f"KUNPAY_MTN_MOMO__COLLECTION__{name}", raising=False)
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2
    assert "KUNPAY_MTN_MOMO__COLLECTION__API_KEY" in result.output


def test_invalid_settings_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUNPAY_PROVIDERS", '{"NOPE": "MTN_MOMO"}')
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output
