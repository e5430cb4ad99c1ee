"""How a handler's verdict becomes an ack, a delayed retry or a dead letter (no broker: the
publisher and the message are recorded in memory)."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from kunpay_worker.messaging import Delivery, Dispatcher, Publisher, Reject, Retry


class RecordingPublisher(Publisher):
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, str, aio_pika.Message]] = []
        self.fail = fail

    async def publish(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append((exchange, routing_key, message))


class Message:
    """The parts of an incoming message the dispatcher uses."""

    def __init__(self, headers: dict[str, Any] | None = None, user_id: str | None = "shop") -> None:
        self.body = b'{"x": 1}'
        self.headers = headers or {}
        self.user_id = user_id
        self.message_id = "m-1"
        self.content_type = "application/json"
        self.correlation_id = None
        self.type = "collect"
        self.timestamp = None
        self.exchange = "kunpay.commands"
        self.routing_key = "collect"
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(f"nack(requeue={requeue})")


def dispatcher(publisher: Publisher, own_user: str | None = None) -> Dispatcher:
    return Dispatcher(
        publisher,
        retry_delays=[1, 5],
        max_attempts=3,
        delay_tiers_ms={"commands": [1000, 5000], "poll": [200]},
        own_user=own_user,
    )


async def run(d: Dispatcher, message: Message, verdict: Exception | None) -> None:
    async def handler(_delivery: Delivery) -> None:
        if verdict is not None:
            raise verdict

    await d.wrap("commands", handler)(message)  # type: ignore[arg-type]


async def test_success_acks() -> None:
    publisher = RecordingPublisher()
    message = Message()
    await run(dispatcher(publisher), message, None)
    assert message.settled == ["ack"]
    assert publisher.sent == []


async def test_a_retry_goes_to_the_delay_tier_with_the_attempt_counted_then_acks() -> None:
    publisher = RecordingPublisher()
    message = Message()
    await run(dispatcher(publisher), message, Retry("db down"))
    ((exchange, queue, copy),) = publisher.sent
    assert (exchange, queue) == ("", "kunpay.delay.commands.1000")
    assert copy.headers["x-kunpay-attempt"] == 1
    assert copy.user_id == "shop"
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert copy.message_id != message.message_id
    assert message.settled == ["ack"]


async def test_retries_exhausted_dead_letter_with_the_reason() -> None:
    publisher = RecordingPublisher()
    message = Message(headers={"x-kunpay-attempt": 2})
    await run(dispatcher(publisher), message, Retry("db down"))
    ((exchange, _, copy),) = publisher.sent
    assert exchange == "kunpay.dlx"
    assert copy.headers["x-kunpay-reason"] == "retries_exhausted"
    assert copy.headers["x-kunpay-error"] == "db down"
    assert copy.headers["x-kunpay-app"] == "shop"
    assert copy.user_id is None
    assert message.settled == ["ack"]


async def test_keep_trying_never_dead_letters_a_valid_command() -> None:
    publisher = RecordingPublisher()
    message = Message(headers={"x-kunpay-attempt": 40})
    await run(dispatcher(publisher), message, Retry("db down", keep_trying=True))
    ((exchange, queue, _),) = publisher.sent
    assert (exchange, queue) == ("", "kunpay.delay.commands.5000")


async def test_a_reject_dead_letters_at_once() -> None:
    publisher = RecordingPublisher()
    message = Message()
    await run(dispatcher(publisher), message, Reject("malformed", "not JSON"))
    ((exchange, _, copy),) = publisher.sent
    assert exchange == "kunpay.dlx"
    assert copy.headers["x-kunpay-reason"] == "malformed"
    assert copy.headers["x-kunpay-original-routing-key"] == "collect"
    assert copy.headers["x-kunpay-attempts"] == 1


async def test_an_unexpected_error_is_retried() -> None:
    publisher = RecordingPublisher()
    message = Message()
    await run(dispatcher(publisher), message, KeyError("bug"))
    assert publisher.sent[0][1] == "kunpay.delay.commands.1000"


async def test_without_impersonation_another_apps_command_is_dead_lettered_not_republished() -> (
    None
):
    publisher = RecordingPublisher()
    message = Message(user_id="shop")
    await run(dispatcher(publisher, own_user="worker"), message, Retry("db down", keep_trying=True))
    ((exchange, _, copy),) = publisher.sent
    assert exchange == "kunpay.dlx"
    assert copy.headers["x-kunpay-reason"] == "cannot_retry_identity"


@pytest.mark.parametrize("verdict", [Retry("db down"), Reject("malformed")])
async def test_when_the_broker_is_gone_the_message_goes_back_to_its_queue(
    verdict: Exception,
) -> None:
    message = Message()
    await run(dispatcher(RecordingPublisher(fail=True)), message, verdict)
    assert message.settled == ["nack(requeue=True)"]


@pytest.mark.parametrize(
    ("header", "counted"),
    [(2**63 - 1, 1), (-5, 1), (True, 1), ("2", 1), (None, 1), (0, 1), (41, 42)],
)
async def test_an_attempt_count_no_retry_of_the_worker_wrote_starts_again_at_one(
    header: object, counted: int
) -> None:
    # An app may put anything in x-kunpay-attempt: 2**63 - 1 counted on overflowed AMQP's
    # 64-bit integer, and the dead letter could not be published.
    publisher = RecordingPublisher()
    message = Message(headers={"x-kunpay-attempt": header})
    await run(dispatcher(publisher), message, Reject("malformed", "not JSON"))
    ((exchange, _, copy),) = publisher.sent
    assert exchange == "kunpay.dlx"
    assert copy.headers["x-kunpay-attempts"] == counted
    aio_pika.Message(body=b"", headers=copy.headers).properties.marshal()  # encodable
    assert message.settled == ["ack"]
