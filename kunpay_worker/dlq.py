"""Dead letters: copied from ``kunpay.dead-letter`` into the ``dead_letters`` table (commit, then
ack), browsed and replayed from there (``kunpay-worker dlq``).

Two kinds reach the queue. Those the worker dead-letters itself carry ``x-kunpay-*`` headers
(reason, error, original exchange and routing key, app, attempts, first and last failure).
Those the broker dead-letters (a crash loop past the delivery limit, an expired message) carry
RabbitMQ's ``x-death`` and keep the app's ``user_id``.

Whatever a message carries, its row is stored (a message the table refused would be held
forever): NUL, which PostgreSQL's text and jsonb refuse, is stored as ␀ (U+2400, the symbol for
null) in the row's text, properties and headers, and a value longer than its column is cut, with
a hash of the whole kept at its end. The body is stored as it came, and the fingerprint that
tells a message from a copy of it is taken from the message as it came.

A replay republishes the stored message to where it was first published, with its app identity
(the worker's broker user has the impersonator tag), with confirms, then marks the row (with ␀
where a header or property held NUL). A replay interrupted between the two publishes that
message again on the next run: harmless, because the worker takes in a command once per
idempotency key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage
from tortoise import fields
from tortoise.exceptions import IntegrityError

from kunpay_sdk import topology
from kunpay_worker.messaging import ATTEMPT_HEADER, ORIGINAL_ID_HEADER, Publisher, settle
from kunpay_worker.storage.models import DeadLetter

__all__ = [
    "Consumer",
    "Facts",
    "facts_of",
    "replay",
    "row_of",
    "select_for_replay",
    "store",
    "stored_headers",
]

log = structlog.get_logger("kunpay.dlq")

# Failure bookkeeping dropped from a replayed message: it starts afresh.
_FAILURE_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
)
_PROPERTIES = ("content_type", "content_encoding", "message_id", "correlation_id", "type")


def _plain(value: Any) -> Any:
    """AMQP header values as JSON: bytes to text, datetimes to ISO, Decimals to strings."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str | bytes):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value) if value not in (None, "") else None


@dataclass(frozen=True)
class Facts:
    """Why and from where a message was dead-lettered."""

    reason: str
    error: str | None
    exchange: str | None
    routing_key: str | None
    source_queue: str | None
    app: str | None
    attempts: int
    first_failed_at: datetime | None
    last_failed_at: datetime | None


def facts_of(message: AbstractIncomingMessage, worker_user: str | None = None) -> Facts:
    """``x-kunpay-*`` headers are believed only on what the worker itself published (its
    broker user in ``user_id``, which RabbitMQ checks): an app could put them on its own
    message, which the broker may then dead-letter."""
    headers = dict(message.headers or {})
    if "x-kunpay-reason" in headers and (worker_user is None or message.user_id == worker_user):
        attempts = headers.get("x-kunpay-attempts")
        return Facts(
            reason=_text(headers["x-kunpay-reason"]) or "unknown",
            error=_text(headers.get("x-kunpay-error")),
            exchange=_text(headers.get("x-kunpay-original-exchange")) or "",
            routing_key=_text(headers.get("x-kunpay-original-routing-key")),
            source_queue=None,
            app=_text(headers.get("x-kunpay-app")),
            attempts=attempts if isinstance(attempts, int) else 0,
            first_failed_at=_when(headers.get("x-kunpay-first-failure")),
            last_failed_at=_when(headers.get("x-kunpay-last-failure")),
        )
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths else None
    death: Mapping[str, Any] = first if isinstance(first, Mapping) else {}
    keys = death.get("routing-keys")
    count = death.get("count")
    return Facts(
        reason=_text(death.get("reason")) or "unknown",
        error=None,
        exchange=_text(death.get("exchange")) or "",
        routing_key=_text(keys[0]) if isinstance(keys, list) and keys else message.routing_key,
        source_queue=_text(death.get("queue")),
        app=message.user_id,
        attempts=count if isinstance(count, int) else 0,
        first_failed_at=_when(death.get("time")),
        last_failed_at=_when(death.get("time")),
    )


def stored_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in (message.headers or {}).items()}


# Added by the broker on each redelivery: not part of what was dead-lettered.
_DELIVERY_HEADERS = ("x-delivery-count",)


def fingerprint(message: AbstractIncomingMessage) -> str:
    digest = hashlib.sha256(message.body)
    headers = {k: v for k, v in stored_headers(message).items() if k not in _DELIVERY_HEADERS}
    digest.update(json.dumps(headers, sort_keys=True, default=str).encode())
    digest.update((message.message_id or "").encode())
    return digest.hexdigest()


# NUL as stored: PostgreSQL refuses it in text and jsonb; the symbol for null shows what it was.
NUL_STORED_AS = "\u2400"


def _storable(value: Any) -> Any:
    """JSON-like data with NUL in its text (keys too) stored as the symbol for null."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_STORED_AS)
    if isinstance(value, Mapping):
        return {_storable(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _width(column: str) -> int:
    field = DeadLetter._meta.fields_map[column]
    assert isinstance(field, fields.CharField)  # noqa: S101 - a column of the model
    return field.max_length


def _column(text: str | None, column: str) -> str | None:
    """``text`` as the dead_letters column stores it: NUL as the symbol for null, and a value
    longer than the column cut, ending with a hash of the whole (distinct ids stay distinct)."""
    if text is None:
        return None
    stored: str = _storable(text)
    width = _width(column)
    if len(stored) <= width:
        return stored
    digest = hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()[:16]
    return f"{stored[: width - len(digest) - 1]}…{digest}"


def row_of(message: AbstractIncomingMessage, worker_user: str | None = None) -> dict[str, Any]:
    """The ``dead_letters`` row of a message, every value one the table stores."""
    facts = facts_of(message, worker_user)
    properties = {
        name: value for name in _PROPERTIES if (value := getattr(message, name)) is not None
    }
    message_id = _text((message.headers or {}).get(ORIGINAL_ID_HEADER)) or message.message_id
    headers = {k: v for k, v in stored_headers(message).items() if k not in _DELIVERY_HEADERS}
    return {
        "fingerprint": fingerprint(message),
        "message_id": _column(message_id, "message_id"),
        "source_queue": _column(facts.source_queue, "source_queue"),
        "exchange": _column(facts.exchange, "exchange"),
        "routing_key": _column(facts.routing_key, "routing_key"),
        "app": _column(facts.app, "app"),
        "properties": _storable(properties),
        "reason": _column(facts.reason, "reason"),
        "error": _storable(facts.error),
        "headers": _storable(headers),
        "body": message.body,
        "attempts": facts.attempts,
        "first_failed_at": facts.first_failed_at,
        "last_failed_at": facts.last_failed_at,
    }


async def store(
    message: AbstractIncomingMessage, worker_user: str | None = None
) -> DeadLetter | None:
    """One dead letter into the table; None when this very message was stored already."""
    try:
        return await DeadLetter.create(**row_of(message, worker_user), created_at=datetime.now(UTC))
    except IntegrityError:
        return None  # redelivered after a commit whose ack was lost


class Consumer:
    """The ``kunpay.dead-letter`` consumer: commit the row, then ack.

    While the database is away the message is held (not requeued: a requeue counts toward a
    quorum queue's delivery limit, past which RabbitMQ 4 drops it) and the insert is tried
    again with backoff; at shutdown it is left unacked, so the broker keeps it."""

    def __init__(self, worker_user: str | None, stop: asyncio.Event) -> None:
        self.worker_user = worker_user
        self.stop = stop

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        delay = 1.0
        while True:
            try:
                row = await store(message, self.worker_user)
                break
            except Exception as exc:  # noqa: BLE001 - the database is down: hold the message
                log.warning(
                    "could not store a dead letter; trying again", error=repr(exc), delay=delay
                )
            try:
                async with asyncio.timeout(delay):
                    await self.stop.wait()
                return  # stopping: unacked, the broker keeps it
            except TimeoutError:
                delay = min(delay * 2, 30.0)
        await settle(message.ack())  # if the channel died, the row's fingerprint dedupes
        if row is not None:
            log.warning(
                "dead letter stored",
                dead_letter_id=row.id,
                reason=row.reason,
                app=row.app,
                routing_key=row.routing_key,
            )


# -- replay ------------------------------------------------------------------------------------


async def select_for_replay(
    *, ids: Iterable[int] = (), reason: str | None = None, every: bool = False
) -> list[DeadLetter]:
    """The rows a replay works through, fixed at its start: not replayed yet, oldest first."""
    query = DeadLetter.filter(replayed_at__isnull=True)
    wanted = list(ids)
    if wanted:
        query = query.filter(id__in=wanted)
    elif reason is not None:
        query = query.filter(reason=reason)
    elif not every:
        return []
    return await query.order_by("id")


class NotReplayable(Exception):
    pass


def _message(row: DeadLetter) -> aio_pika.Message:
    headers = {
        k: v
        for k, v in (row.headers or {}).items()
        if not k.startswith("x-kunpay-") and k not in _FAILURE_HEADERS and k != ATTEMPT_HEADER
    }
    headers["x-kunpay-replayed-from"] = row.id
    properties = dict(row.properties or {})
    return aio_pika.Message(
        body=bytes(row.body),
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        user_id=row.app or None,
        content_type=properties.get("content_type"),
        content_encoding=properties.get("content_encoding"),
        # The command id is in the body; the AMQP message id must be fresh (aiormq).
        message_id=f"replay-{row.id}-{datetime.now(UTC).timestamp():.6f}",
        correlation_id=properties.get("correlation_id"),
        type=properties.get("type"),
    )


# Where a replay may publish: kunpay's work inputs, nothing else (not events, not outcomes).
REPLAYABLE = frozenset(
    {
        *((topology.COMMANDS_EXCHANGE, key) for key in topology.COMMAND_ROUTING_KEYS),
        ("", topology.COMMANDS_QUEUE),  # a retried command, from a delay queue
        ("", topology.POLL_QUEUE),
    }
)


def destination(row: DeadLetter) -> tuple[str, str]:
    """(exchange, routing key) a replay publishes to; only kunpay's commands and checks."""
    target = (row.exchange or "", row.routing_key or "")
    if target not in REPLAYABLE:
        raise NotReplayable(
            f"dead letter {row.id} went to exchange {target[0]!r} with key {target[1]!r}, "
            "which is not a kunpay command or check: not replayed"
        )
    return target


async def replay(row: DeadLetter, publisher: Publisher) -> None:
    """Republish one dead letter (confirmed, mandatory), then mark it replayed."""
    exchange, routing_key = destination(row)
    await publisher.publish(exchange, routing_key, _message(row))
    await DeadLetter.filter(id=row.id, replayed_at__isnull=True).update(
        replayed_at=datetime.now(UTC)
    )
