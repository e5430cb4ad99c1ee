"""What ``/metrics`` counts: commands by type and outcome, provider calls (and calls not sent),
transitions, dead letters; and the page itself (no broker, no database: counters are read from
the registry before and after, so the tests do not depend on their order)."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from kunpay_sdk import topology
from kunpay_sdk.contracts import Event, EventType, Status, TransactionSnapshot, TransactionType
from kunpay_worker.messaging import Reject, Retry, command_type
from kunpay_worker.metrics import REGISTRY, Metrics
from kunpay_worker.outbox import OutboxRelay
from kunpay_worker.providers import http as http_module
from kunpay_worker.providers.errors import (
    ProviderCircuitOpen,
    ProviderNotReached,
    ProviderThrottled,
    ProviderUnavailable,
)
from kunpay_worker.providers.http import CircuitBreaker, ProviderHttp
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.repository import event_outbox_row
from tests.unit.test_dispatcher import Message, RecordingPublisher, dispatcher

URL = "https://provider.test/status"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def skipped(backend: str, reason: str) -> float:
    return value("kunpay_provider_calls_skipped_total", backend=backend, reason=reason)


# -- provider calls -----------------------------------------------------------------------------


class FakeTime:
    """Stands in for the ``time`` module in providers/http.py: the call takes what a test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def provider(session: aiohttp.ClientSession, name: str) -> ProviderHttp:
    return ProviderHttp(
        name,
        session,
        base_url="https://provider.test",
        timeout=aiohttp.ClientTimeout(total=5, connect=1),
        recorder=None,
    )


async def get(http: ProviderHttp) -> int:
    return (await http.request("GET", "/status", operation="status", transaction_id=None)).status


async def test_a_provider_call_is_counted_with_its_status_and_its_duration_observed(
    session: aiohttp.ClientSession, mocked: aioresponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime()
    monkeypatch.setattr(http_module, "time", clock)

    def answer(_url: Any, **_kwargs: Any) -> CallbackResult:
        clock.now += 0.3  # the provider takes 300 ms
        return CallbackResult(status=202, body="{}")

    mocked.get(URL, callback=answer)
    labels = {"backend": "METRICS_OK", "operation": "status"}
    calls = value("kunpay_provider_calls_total", **labels, status="202")
    seconds = value("kunpay_provider_call_seconds_sum", **labels)
    fast = value("kunpay_provider_call_seconds_bucket", **labels, le="0.25")
    slow = value("kunpay_provider_call_seconds_bucket", **labels, le="0.5")

    assert await get(provider(session, "METRICS_OK")) == 202

    assert value("kunpay_provider_calls_total", **labels, status="202") == calls + 1
    assert value("kunpay_provider_call_seconds_sum", **labels) == pytest.approx(seconds + 0.3)
    assert value("kunpay_provider_call_seconds_bucket", **labels, le="0.25") == fast
    assert value("kunpay_provider_call_seconds_bucket", **labels, le="0.5") == slow + 1


@pytest.mark.parametrize(
    ("exception", "status", "raised"),
    [
        (aiohttp.ServerTimeoutError("read timeout"), "timeout", ProviderUnavailable),
        (aiohttp.ConnectionTimeoutError("connect timeout"), "timeout", ProviderNotReached),
        (aiohttp.ServerDisconnectedError(), "connection_error", ProviderUnavailable),
        (aiohttp.ClientPayloadError("truncated"), "error", ProviderUnavailable),
    ],
)
async def test_a_call_without_an_answer_is_counted_with_what_went_wrong(
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    exception: Exception,
    status: str,
    raised: type[Exception],
) -> None:
    mocked.get(URL, exception=exception)
    labels = {"backend": "METRICS_FAIL", "operation": "status"}
    calls = value("kunpay_provider_calls_total", **labels, status=status)
    observed = value("kunpay_provider_call_seconds_count", **labels)

    with pytest.raises(raised):
        await get(provider(session, "METRICS_FAIL"))

    assert value("kunpay_provider_calls_total", **labels, status=status) == calls + 1
    assert value("kunpay_provider_call_seconds_count", **labels) == observed + 1


async def test_a_call_refused_by_the_open_circuit_is_skipped_not_sent(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    http = provider(session, "METRICS_CIRCUIT")
    http.limit(
        max_concurrent=8,
        slot_wait=5,
        breaker=CircuitBreaker("METRICS_CIRCUIT", failures=1, cooldown=60),
    )
    mocked.get(URL, status=503, repeat=True)
    labels = {"backend": "METRICS_CIRCUIT", "operation": "status"}
    failed = value("kunpay_provider_calls_total", **labels, status="503")
    observed = value("kunpay_provider_call_seconds_count", **labels)
    refused = skipped("METRICS_CIRCUIT", "circuit_open")

    assert await get(http) == 503  # opens the circuit
    with pytest.raises(ProviderCircuitOpen):
        await get(http)

    assert value("kunpay_provider_calls_total", **labels, status="503") == failed + 1
    assert value("kunpay_provider_call_seconds_count", **labels) == observed + 1
    assert skipped("METRICS_CIRCUIT", "circuit_open") == refused + 1


async def test_a_call_that_found_no_free_slot_is_skipped_not_sent(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    http = provider(session, "METRICS_SLOTS")
    http.limit(max_concurrent=1, slot_wait=0.05, breaker=None)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(_url: Any, **_kwargs: Any) -> CallbackResult:
        entered.set()
        await release.wait()
        return CallbackResult(status=200, body="{}")

    mocked.get(URL, callback=slow)
    labels = {"backend": "METRICS_SLOTS", "operation": "status"}
    sent = value("kunpay_provider_calls_total", **labels, status="200")
    throttled = skipped("METRICS_SLOTS", "no_slot")

    first = asyncio.create_task(get(http))
    async with asyncio.timeout(5):
        await entered.wait()
    with pytest.raises(ProviderThrottled):
        await get(http)
    release.set()
    assert await first == 200

    assert value("kunpay_provider_calls_total", **labels, status="200") == sent + 1
    assert skipped("METRICS_SLOTS", "no_slot") == throttled + 1


# -- commands and dead letters ------------------------------------------------------------------


def command(operation: str) -> Message:
    message = Message()
    message.body = json.dumps({"operation": operation, "idempotency_key": "k-1"}).encode()
    return message


async def deliver(
    message: Message, verdict: Exception | None, *, target: str = "commands", fail: bool = False
) -> None:
    async def handler(_delivery: Any) -> None:
        if verdict is not None:
            raise verdict

    await dispatcher(RecordingPublisher(fail=fail)).wrap(target, handler)(message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("operation", "verdict", "outcome"),
    [
        ("collect", None, "handled"),
        ("disburse", Retry("provider down"), "retried"),
        ("refund", Reject("transaction_id_mismatch"), "dead_lettered"),
        ("retry", RuntimeError("bug"), "failed"),
    ],
)
async def test_a_command_is_counted_with_its_type_and_what_became_of_it(
    operation: str, verdict: Exception | None, outcome: str
) -> None:
    before = value("kunpay_commands_total", type=operation, outcome=outcome)
    await deliver(command(operation), verdict)
    assert value("kunpay_commands_total", type=operation, outcome=outcome) == before + 1


async def test_a_command_whose_retry_cannot_be_published_is_counted_as_requeued() -> None:
    before = value("kunpay_commands_total", type="collect", outcome="requeued")
    retried = value("kunpay_commands_total", type="collect", outcome="retried")
    message = command("collect")
    await deliver(message, Retry("db down"), fail=True)
    assert message.settled == ["nack(requeue=True)"]
    assert value("kunpay_commands_total", type="collect", outcome="requeued") == before + 1
    assert value("kunpay_commands_total", type="collect", outcome="retried") == retried


async def test_a_retry_past_the_last_attempt_is_counted_as_dead_lettered() -> None:
    before = value("kunpay_commands_total", type="disburse", outcome="dead_lettered")
    exhausted = value("kunpay_dead_lettered_total", reason="retries_exhausted")
    message = command("disburse")
    message.headers = {"x-kunpay-attempt": 2}  # the dispatcher allows 3
    await deliver(message, Retry("db down"))
    assert value("kunpay_commands_total", type="disburse", outcome="dead_lettered") == before + 1
    assert value("kunpay_dead_lettered_total", reason="retries_exhausted") == exhausted + 1


async def test_what_is_not_a_command_is_counted_as_unknown() -> None:
    before = value("kunpay_commands_total", type="unknown", outcome="dead_lettered")
    message = Message()
    message.body = b"\xff not json"
    await deliver(message, Reject("malformed", "not JSON"))
    assert value("kunpay_commands_total", type="unknown", outcome="dead_lettered") == before + 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"operation": "collect"}', "collect"),
        (b'{"operation": "refund", "amount": "5"}', "refund"),
        (b'{"operation": "steal"}', "unknown"),
        (b'{"amount": "5"}', "unknown"),
        (b'["collect"]', "unknown"),
        (b'{"operation": ["collect"]}', "unknown"),
        (b"", "unknown"),
    ],
)
def test_the_command_type_label_is_one_of_the_operations_or_unknown(
    body: bytes, expected: str
) -> None:
    assert command_type(body) == expected


async def test_poll_messages_are_not_counted_as_commands_but_their_dead_letters_are() -> None:
    commands = sum(
        value("kunpay_commands_total", type=operation, outcome="dead_lettered")
        for operation in ("collect", "unknown")
    )
    malformed = value("kunpay_dead_lettered_total", reason="malformed")
    await deliver(command("collect"), Reject("malformed", "a poll needs poll_seq"), target="poll")
    after = sum(
        value("kunpay_commands_total", type=operation, outcome="dead_lettered")
        for operation in ("collect", "unknown")
    )
    assert after == commands
    assert value("kunpay_dead_lettered_total", reason="malformed") == malformed + 1


async def test_a_dead_letter_that_could_not_be_published_is_not_counted() -> None:
    before = value("kunpay_dead_lettered_total", reason="no_app_identity")
    await deliver(command("collect"), Reject("no_app_identity"), fail=True)
    assert value("kunpay_dead_lettered_total", reason="no_app_identity") == before


# -- transitions --------------------------------------------------------------------------------


def event(
    kind: TransactionType, status: Status, event_type: EventType, *, with_transaction: bool = True
) -> Event:
    now = datetime.now(UTC)
    snapshot = TransactionSnapshot(
        id=uuid.uuid4(),
        type=kind,
        app="shop",
        provider="MTN_MOMO",
        backend="MTN_MOMO",
        amount=Decimal(100),
        currency="XAF",
        phone_number="237670000000",
        status=status,
        order_id="o-1",
        user_id="u-1",
        idempotency_key="k-1",
        created_at=now,
        updated_at=now,
    )
    return Event(
        event_id=uuid.uuid4(),
        type=event_type,
        occurred_at=now,
        sequence=2,
        transaction=snapshot if with_transaction else None,
    )


def relay() -> OutboxRelay:
    return OutboxRelay(RecordingPublisher(), batch=10, sweep_interval=1, lease=30)


async def test_a_published_transition_is_counted_once_even_when_published_again() -> None:
    row = event_outbox_row(
        event(TransactionType.REFUND, Status.COMPLETED, EventType.REFUNDED),
        "shop",
        datetime.now(UTC),
    )
    before = value("kunpay_transitions_total", type="refund", status="COMPLETED")
    outbox = relay()
    assert await outbox._publish(row)
    assert value("kunpay_transitions_total", type="refund", status="COMPLETED") == before + 1
    assert await outbox._publish(row)  # its delete failed: the row went out again
    assert value("kunpay_transitions_total", type="refund", status="COMPLETED") == before + 1


async def test_events_that_announce_no_transition_and_failed_publishes_are_not_counted() -> None:
    now = datetime.now(UTC)
    duplicate = event_outbox_row(
        event(TransactionType.DISBURSEMENT, Status.COMPLETED, EventType.DUPLICATE_DETECTED),
        "shop",
        now,
    )
    conflict = event_outbox_row(
        event(
            TransactionType.DISBURSEMENT,
            Status.REJECTED,
            EventType.REJECTED,
            with_transaction=False,
        ),
        "shop",
        now,
    )
    unpublished = event_outbox_row(
        event(TransactionType.DISBURSEMENT, Status.FAILED, EventType.FAILED), "shop", now
    )
    statuses = ("COMPLETED", "REJECTED", "FAILED")
    before = [value("kunpay_transitions_total", type="disbursement", status=s) for s in statuses]
    assert await relay()._publish(duplicate)
    assert await relay()._publish(conflict)
    assert not await OutboxRelay(
        RecordingPublisher(fail=True), batch=10, sweep_interval=1, lease=30
    )._publish(unpublished)
    after = [value("kunpay_transitions_total", type="disbursement", status=s) for s in statuses]
    assert after == before


class ConfirmsTogether(RecordingPublisher):
    """Confirms only once both of an event's publishes are out, or refuses the outcomes one."""

    def __init__(self, refuse: str | None = None) -> None:
        super().__init__()
        self.refuse = refuse
        self.both = asyncio.Event()

    async def publish(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        self.sent.append((exchange, routing_key, message))
        if exchange == self.refuse:
            raise ConnectionError("channel closed")
        if len(self.sent) == 2:
            self.both.set()
        await asyncio.wait_for(self.both.wait(), 5)


async def test_an_events_two_publishes_wait_for_their_confirms_side_by_side() -> None:
    row = event_outbox_row(
        event(TransactionType.COLLECTION, Status.COMPLETED, EventType.SUCCEEDED),
        "shop",
        datetime.now(UTC),
    )
    publisher = ConfirmsTogether()
    outbox = OutboxRelay(publisher, batch=10, sweep_interval=1, lease=30)
    assert await asyncio.wait_for(outbox._publish(row), 5)  # one after the other would hang
    assert [exchange for exchange, _, _ in publisher.sent] == [
        topology.EVENTS_EXCHANGE,
        topology.OUTCOMES_EXCHANGE,
    ]
    refused = ConfirmsTogether(refuse=topology.OUTCOMES_EXCHANGE)
    assert not await OutboxRelay(refused, batch=10, sweep_interval=1, lease=30)._publish(row)


# -- the page -----------------------------------------------------------------------------------


async def test_the_page_has_the_counters_and_the_database_counts_of_every_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def pending_counts() -> tuple[int, int]:
        return 3, 1

    async def outbox_backlog() -> int:
        return 7

    async def unreplayed_dead_letters() -> int:
        return 2

    monkeypatch.setattr(repo, "pending_counts", pending_counts)
    monkeypatch.setattr(repo, "outbox_backlog", outbox_backlog)
    monkeypatch.setattr(repo, "unreplayed_dead_letters", unreplayed_dead_letters)
    await deliver(command("collect"), None)  # so the counter has a sample to show

    for circuits in ({"MTN_MOMO": "open"}, {"MTN_MOMO": "closed"}):  # two in one process
        text = (await Metrics(functools.partial(dict, circuits)).render()).decode()
        assert "kunpay_pending_transactions 3.0" in text
        assert "kunpay_stale_transactions 1.0" in text
        assert "kunpay_outbox_backlog 7.0" in text
        assert "kunpay_dead_letters 2.0" in text
        assert 'kunpay_commands_total{outcome="handled",type="collect"}' in text
        assert "# TYPE kunpay_provider_call_seconds histogram" in text
        state = circuits["MTN_MOMO"]
        assert f'kunpay_provider_circuit_state{{backend="MTN_MOMO",state="{state}"}} 1.0' in text


async def test_the_page_keeps_the_last_counts_when_the_database_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([5, None])

    async def outbox_backlog() -> int:
        answer = next(answers)
        if answer is None:
            raise ConnectionError("database gone")
        return answer

    async def pending_counts() -> tuple[int, int]:
        return 0, 0

    async def unreplayed_dead_letters() -> int:
        return 0

    monkeypatch.setattr(repo, "pending_counts", pending_counts)
    monkeypatch.setattr(repo, "outbox_backlog", outbox_backlog)
    monkeypatch.setattr(repo, "unreplayed_dead_letters", unreplayed_dead_letters)
    page = Metrics(dict)
    assert b"kunpay_outbox_backlog 5.0" in await page.render()
    assert b"kunpay_outbox_backlog 5.0" in await page.render()
