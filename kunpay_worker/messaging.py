"""How a consumed message meets its fate.

Handlers raise :class:`Retry` or :class:`Reject` (or return); :class:`Dispatcher` turns that into
an ack, a confirmed republish to a delay tier then an ack, or a confirmed publish to the
dead-letter exchange then an ack. Nothing is requeued in a loop: a message goes back to the queue
only when publishing its retry failed, and then the queue's ``x-delivery-limit`` bounds it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from kunpay_sdk import topology
from kunpay_sdk.contracts import CollectCommand, DisburseCommand, RefundCommand, RetryCommand
from kunpay_worker.domain.schedule import retry_delay, tier_for, to_ms
from kunpay_worker.metrics import COMMANDS, DEAD_LETTERED

__all__ = [
    "Delivery",
    "Dispatcher",
    "Publisher",
    "Reject",
    "Retry",
    "can_impersonate",
    "command_type",
]

log = structlog.get_logger("kunpay.messaging")

ATTEMPT_HEADER = "x-kunpay-attempt"
# The worker's own retries count in ATTEMPT_HEADER, but an app may put anything there. No retry
# chain counts this far (one a second for thirty years); a count past it is an app's, and its
# next would overflow AMQP's signed 64-bit integer (the retry or dead letter then fails).
MAX_ATTEMPT_COUNT = 10**9
ORIGINAL_ID_HEADER = "x-kunpay-message-id"

COMMAND_TYPES = frozenset(
    str(model.model_fields["operation"].default)
    for model in (CollectCommand, DisburseCommand, RefundCommand, RetryCommand)
)

# What became of a delivery: acked after its handler returned, republished to a delay tier,
# dead-lettered, handler raised something else (then retried), or back on its queue because
# the retry or dead letter could not be published.
Outcome = Literal["handled", "retried", "dead_lettered", "failed", "requeued"]


class Retry(Exception):
    """Handle this message again later (``delay`` seconds, else the backoff schedule).

    ``keep_trying``: never dead-letter for running out of attempts; past ``max_attempts`` the
    message keeps coming back at the longest delay tier. For valid commands and polls, which the
    reliability contract counts as lost if they sit in the dead-letter queue.
    """

    def __init__(
        self, reason: str, *, delay: float | None = None, keep_trying: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.keep_trying = keep_trying


class Reject(Exception):
    """This message can never be handled: dead-letter it with ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Delivery:
    message: AbstractIncomingMessage
    attempt: int  # 1 for the first handling, +1 per delayed retry
    max_attempts: int

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


Handler = Callable[[Delivery], Awaitable[None]]


class Publisher:
    """Publishes with confirms on one channel; raises aio-pika's errors on nack or return."""

    def __init__(self, channel: AbstractChannel, *, timeout: float = 30.0) -> None:
        self.channel = channel
        self.timeout = timeout

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        *,
        mandatory: bool = True,
    ) -> None:
        target = (
            self.channel.default_exchange
            if exchange == ""
            else await self.channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(message, routing_key, mandatory=mandatory, timeout=self.timeout)


def command_type(body: bytes) -> str:
    """The command's ``operation`` for the metrics label, "unknown" when the body has none of
    the known ones (not JSON, not an object, another value: the label stays bounded)."""
    try:
        operation = json.loads(body).get("operation")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply
        return "unknown"
    return operation if isinstance(operation, str) and operation in COMMAND_TYPES else "unknown"


def _now() -> datetime:
    return datetime.now(UTC)


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    if message.message_id is not None:
        # The first publisher's id, kept through retries and into the dead-letter table.
        headers.setdefault(ORIGINAL_ID_HEADER, message.message_id)
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),  # never reuse a message id across publishes
        correlation_id=message.correlation_id,
        type=message.type,
        timestamp=message.timestamp,
        # Keeps the app identity on a retried command; RabbitMQ lets the worker set another
        # user's id only when its broker user has the "impersonator" tag.
        user_id=message.user_id,
    )


def _attempt(previous: object) -> int:
    """This delivery's attempt: one more than the count in ATTEMPT_HEADER, when that is one
    the worker could have written."""
    if isinstance(previous, bool) or not isinstance(previous, int):
        return 1
    return previous + 1 if 0 <= previous < MAX_ATTEMPT_COUNT else 1


class Dispatcher:
    """Wraps handlers: ack, delayed retry, or dead-letter; counts in-flight work, and counts
    each command delivery by type and outcome (``kunpay_commands_total``) and each dead letter
    by reason (``kunpay_dead_lettered_total``)."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        retry_delays: list[float],
        max_attempts: int,
        delay_tiers_ms: dict[str, list[int]],
        own_user: str | None = None,
        worker_user: str | None = None,
    ) -> None:
        self.publisher = publisher
        self.retry_delays = retry_delays
        self.max_attempts = max_attempts
        self.delay_tiers_ms = delay_tiers_ms
        # Set when the worker's broker user cannot impersonate: then only its own user's
        # messages can be republished with their user_id.
        self.own_user = own_user
        # Stamped on the dead letters this worker publishes (RabbitMQ checks it), so that only
        # its x-kunpay-* headers are believed, not ones an app put on its own message.
        self.worker_user = worker_user
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def wrap(self, target: str, handler: Handler) -> Callable[[AbstractIncomingMessage], Any]:
        async def consume(message: AbstractIncomingMessage) -> None:
            self._inflight += 1
            self._idle.clear()
            try:
                await self._handle(target, handler, message)
            finally:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.set()

        return consume

    async def wait_idle(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _handle(
        self, target: str, handler: Handler, message: AbstractIncomingMessage
    ) -> None:
        headers = dict(message.headers or {})
        attempt = _attempt(headers.get(ATTEMPT_HEADER))
        delivery = Delivery(message, attempt, self.max_attempts)
        outcome: Outcome
        try:
            await handler(delivery)
        except Reject as verdict:
            outcome = await self.dead_letter(
                message, verdict.reason, verdict.detail, attempt=attempt
            )
        except Retry as verdict:
            outcome = await self._retry(
                target, message, attempt, verdict.reason, verdict.delay, verdict.keep_trying
            )
        except Exception as exc:
            log.exception("handler failed", queue=target, message_id=message.message_id)
            done = await self._retry(
                target, message, attempt, f"{type(exc).__name__}: {exc}", None, False
            )
            outcome = "failed" if done == "retried" else done
        else:
            await settle(message.ack())
            outcome = "handled"
        if target == "commands":
            COMMANDS.labels(command_type(message.body), outcome).inc()

    async def _retry(
        self,
        target: str,
        message: AbstractIncomingMessage,
        attempt: int,
        reason: str,
        delay: float | None,
        keep_trying: bool,
    ) -> Outcome:
        if attempt >= self.max_attempts:
            if not keep_trying:
                return await self.dead_letter(message, "retries_exhausted", reason, attempt=attempt)
            log.error(
                "message keeps failing; retrying", queue=target, attempt=attempt, reason=reason
            )
        if self.own_user is not None and message.user_id not in (None, self.own_user):
            return await self.dead_letter(
                message,
                "cannot_retry_identity",
                f"{reason}; the worker's broker user needs the impersonator tag to retry a "
                f"command of {message.user_id!r}",
                attempt=attempt,
            )
        seconds = delay if delay is not None else retry_delay(attempt, self.retry_delays)
        tier = tier_for(to_ms(seconds), self.delay_tiers_ms[target])
        headers = dict(message.headers or {})
        now = _now().isoformat()
        headers.setdefault("x-kunpay-first-failure", now)
        headers.update(
            {
                ATTEMPT_HEADER: attempt,
                "x-kunpay-last-failure": now,
                "x-kunpay-last-error": reason[:500],
            }
        )
        try:
            await self.publisher.publish(
                "", topology.delay_queue(target, tier), _copy(message, headers)
            )
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
            log.warning("could not schedule a retry; returning the message", error=repr(exc))
            # Bounded by the queue's x-delivery-limit, which dead-letters after that many.
            await settle(message.nack(requeue=True))
            return "requeued"
        log.info("retry scheduled", queue=target, attempt=attempt, delay_ms=tier, reason=reason)
        await settle(message.ack())
        return "retried"

    async def dead_letter(
        self, message: AbstractIncomingMessage, reason: str, detail: str, *, attempt: int
    ) -> Outcome:
        """Publish a copy to the dead-letter exchange (with why, in ``x-kunpay-*`` headers),
        then ack; "requeued" when the copy could not be published."""
        headers = dict(message.headers or {})
        now = _now().isoformat()
        headers.update(
            {
                "x-kunpay-reason": reason,
                "x-kunpay-error": detail[:1000],
                "x-kunpay-original-exchange": message.exchange or "",
                "x-kunpay-original-routing-key": message.routing_key or "",
                "x-kunpay-attempts": attempt,
                "x-kunpay-app": message.user_id or "",
                "x-kunpay-last-failure": now,
            }
        )
        headers.setdefault("x-kunpay-first-failure", now)
        copy = _copy(message, headers)
        copy.user_id = self.worker_user  # the app is in x-kunpay-app
        try:
            await self.publisher.publish(topology.DEAD_LETTER_EXCHANGE, "", copy)
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
            log.warning("could not dead-letter; returning the message", error=repr(exc))
            await settle(message.nack(requeue=True))  # bounded by x-delivery-limit
            return "requeued"
        DEAD_LETTERED.labels(reason).inc()
        log.warning(
            "dead-lettered", reason=reason, detail=detail[:200], message_id=message.message_id
        )
        await settle(message.ack())
        return "dead_lettered"


async def settle(action: Awaitable[Any]) -> None:
    """Ack/nack; a dead channel means the broker redelivers, which handlers tolerate."""
    try:
        await action
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning("could not settle a message; it will be redelivered", error=repr(exc))


async def can_impersonate(connection: aio_pika.abc.AbstractConnection) -> bool:
    """Whether this broker user may publish with another user's ``user_id`` (impersonator tag)."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"", user_id="kunpay-impersonation-probe", message_id=str(uuid.uuid4())
            ),
            routing_key="kunpay.impersonation-probe",  # no such queue: the message goes nowhere
            mandatory=False,
            timeout=10,
        )
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True
