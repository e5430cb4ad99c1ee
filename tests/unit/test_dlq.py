"""What the dead-letter table believes about a message, and where a replay may publish."""

from __future__ import annotations

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
