"""What the dead-letter table believes about a message, and where a replay may publish."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from kunpay_sdk import topology
from kunpay_worker import dlq


def message(user_id: str | None, headers: dict[str, Any], routing_key: str = "collect") -> Any:
    return SimpleNamespace(headers=headers, user_id=user_id, routing_key=routing_key)


WORKER_HEADERS = {
    "x-kunpay-reason": "malformed",
    "x-kunpay-error": "not JSON",
    "x-kunpay-original-exchange": topology.COMMANDS_EXCHANGE,
    "x-kunpay-original-routing-key": "collect",
    "x-kunpay-app": "shop",
    "x-kunpay-attempts": 1,
    "x-kunpay-first-failure": "2026-11-26T10:00:00+00:00",
}


def test_the_workers_own_dead_letters_are_read_from_its_headers() -> None:
    facts = dlq.facts_of(message("kunpay-worker", WORKER_HEADERS), "kunpay-worker")
    assert (facts.reason, facts.app, facts.exchange, facts.routing_key) == (
        "malformed",
        "shop",
        topology.COMMANDS_EXCHANGE,
        "collect",
    )
    assert facts.first_failed_at == datetime(2026, 11, 26, 10, tzinfo=UTC)


def test_headers_an_app_forged_on_its_own_message_are_not_believed() -> None:
    forged = {
        **WORKER_HEADERS,
        "x-kunpay-app": "victim",
        "x-kunpay-original-exchange": "kunpay.events",
    }
    death = {
        "reason": b"delivery_limit",
        "queue": b"kunpay.commands",
        "exchange": b"kunpay.commands",
        "routing-keys": [b"collect"],
        "count": 4,
    }
    facts = dlq.facts_of(message("shop", {**forged, "x-death": [death]}), "kunpay-worker")
    assert (facts.reason, facts.app, facts.exchange, facts.attempts) == (
        "delivery_limit",
        "shop",  # the user RabbitMQ checked, not the header
        topology.COMMANDS_EXCHANGE,
        4,
    )


@pytest.mark.parametrize(
    ("exchange", "key"),
    [
        (topology.COMMANDS_EXCHANGE, "collect"),
        ("", topology.COMMANDS_QUEUE),
        ("", topology.POLL_QUEUE),
    ],
)
def test_a_replay_goes_back_to_kunpays_work_inputs(exchange: str, key: str) -> None:
    row: Any = SimpleNamespace(id=1, exchange=exchange, routing_key=key)
    assert dlq.destination(row) == (exchange, key)


@pytest.mark.parametrize(
    ("exchange", "key"),
    [
        (topology.EVENTS_EXCHANGE, ""),
        (topology.OUTCOMES_EXCHANGE, "victim.1"),
        ("", topology.DEAD_LETTER_QUEUE),
        ("", "app.shop.orders"),
        (topology.COMMANDS_EXCHANGE, "steal"),
        (None, None),
    ],
)
def test_a_replay_goes_nowhere_else(exchange: str | None, key: str | None) -> None:
    row: Any = SimpleNamespace(id=1, exchange=exchange, routing_key=key)
    with pytest.raises(dlq.NotReplayable, match="not replayed"):
        dlq.destination(row)


def delivered(headers: dict[str, Any], message_id: str | None = "m-1", **properties: Any) -> Any:
    """A dead-lettered message as the consumer gets it, its properties named or None."""
    named = {name: properties.get(name) for name in ("content_type", "correlation_id", "type")}
    return SimpleNamespace(
        headers=headers,
        user_id="shop",
        routing_key="collect",
        message_id=message_id,
        body=b"not \x00 a command",
        content_encoding=None,
        **named,
    )


@pytest.mark.parametrize(
    ("headers", "message_id"),
    [
        ({}, "m" * 201),  # a property can be 255 characters
        ({"x-kunpay-message-id": "i" * 300}, "m-1"),
        ({"x-kunpay-message-id": {"nested": ["x" * 250, datetime.now(UTC)]}}, None),
    ],
)
def test_a_message_id_longer_than_its_column_is_cut_keeping_a_hash(
    headers: dict[str, Any], message_id: str | None
) -> None:
    stored = dlq.row_of(delivered(headers, message_id))["message_id"]
    assert len(stored) == 200
    original = str(headers.get("x-kunpay-message-id", message_id))
    assert stored.startswith(original[:150])
    other = dlq.row_of(delivered(headers, (message_id or "") + "2"))["message_id"]
    if "x-kunpay-message-id" not in headers:
        assert other != stored  # ids sharing their first 200 characters stay apart


def test_a_message_id_that_fits_is_stored_as_it_is() -> None:
    assert dlq.row_of(delivered({}, "m" * 200))["message_id"] == "m" * 200


def test_nul_is_stored_as_the_symbol_for_null_but_the_body_as_it_came() -> None:
    headers = {"note": "a\x00b", "k\x00ey": ["\x00", {"x": b"by\x00tes"}]}
    message = delivered(headers, "id\x00", correlation_id="c\x00", type="t\x00")
    row = dlq.row_of(message)
    assert row["message_id"] == "id␀"
    assert row["headers"] == {"note": "a␀b", "k␀ey": ["␀", {"x": "by␀tes"}]}
    assert row["properties"] == {"message_id": "id␀", "correlation_id": "c␀", "type": "t␀"}
    assert row["body"] == b"not \x00 a command"
    text = json.dumps({k: v for k, v in row.items() if k != "body"}, default=str)
    assert "\\u0000" not in text  # what PostgreSQL's jsonb refuses


def test_the_fingerprint_is_of_the_message_as_it_came() -> None:
    with_nul = dlq.row_of(delivered({"note": "a\x00b"}))
    with_symbol = dlq.row_of(delivered({"note": "a␀b"}))
    assert with_nul["headers"] == with_symbol["headers"]
    assert with_nul["fingerprint"] != with_symbol["fingerprint"]
