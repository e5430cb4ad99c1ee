"""The transactional outbox relay (DESIGN.md §5).

Handlers write events and poll messages to the ``outbox`` table in the same DB transaction as
the state change they announce. The relay claims rows (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL; a lease guarded by a conditional update everywhere), publishes them with confirms,
and deletes them. A crash between publish and delete republishes: delivery is at-least-once and
subscribers dedupe on ``event_id``.

The relay also counts status transitions (``kunpay_transitions_total``): each published event
that announces one. Counting here rather than in ``repository.set_status`` because a row reaches
the relay only once its DB transaction committed (set_status runs inside transactions that can
still roll back, e.g. on a LostRace), and because transitions committed by other processes
(``kunpay-worker resolve``) are published, hence counted, by a worker, whose ``/metrics`` is
scraped. The trade-offs: a transition is counted when its event goes out, not when it is
committed (later while the broker is down); and an event published twice is counted twice when
two processes publish it (a worker that crashed between publish and delete, or whose lease ran
out). Within one process, recently counted event ids are remembered, so a row republished after
its delete failed is counted once. Same-status reason updates emit no event and are no
transition; ``payment.duplicate_detected`` and conflict rejections without a transaction are
events but no transition, and are not counted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from datetime import timedelta

import aio_pika
import aiormq.exceptions
import structlog
from tortoise.expressions import F, Q
from tortoise.transactions import in_transaction

from kunpay_sdk import topology
from kunpay_sdk.contracts import EventType
from kunpay_worker.messaging import Publisher
from kunpay_worker.metrics import TRANSITIONS
from kunpay_worker.storage import db
from kunpay_worker.storage.models import OutboxKind, OutboxMessage
from kunpay_worker.storage.repository import utcnow

__all__ = ["OutboxRelay"]

log = structlog.get_logger("kunpay.outbox")

PUBLISH_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError)

# Event ids remembered so a republished transition is counted once: far more than a worker
# publishes within one lease (when a row whose delete failed goes out again).
COUNTED_EVENTS = 10_000


class OutboxRelay:
    def __init__(
        self, publisher: Publisher, *, batch: int, sweep_interval: float, lease: float
    ) -> None:
        self._publisher = publisher
        self._batch = batch
        self._sweep_interval = sweep_interval
        self._lease = lease
        self._wake = asyncio.Event()
        self.published = 0
        self._counted: OrderedDict[str, None] = OrderedDict()

    def notify(self) -> None:
        """A handler committed outbox rows: publish them now rather than at the next sweep."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(self._sweep_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.drain()
            except Exception as exc:
                if not db.unavailable(exc):
                    log.exception("outbox relay pass failed; retrying at the next sweep")
                else:
                    log.warning("database unavailable; the outbox relay retries", error=repr(exc))

    async def drain(self) -> int:
        """Publish everything publishable now; returns how many rows went out."""
        total = 0
        while True:
            rows = await self._claim()
            if not rows:
                return total
            # One transaction's rows in order, transactions side by side.
            groups: dict[object, list[OutboxMessage]] = {}
            for row in rows:
                groups.setdefault(row.transaction_id or row.id, []).append(row)
            results = await asyncio.gather(*(self._publish_in_order(g) for g in groups.values()))
            sent = [row_id for group in results for row_id in group]
            if sent:
                await OutboxMessage.filter(id__in=sent).delete()
            total += len(sent)
            self.published += len(sent)
            if len(sent) < len(rows):
                return total  # the rest waits for its lease to expire

    async def backlog(self) -> int:
        return await OutboxMessage.all().count()

    async def _claim(self) -> list[OutboxMessage]:
        now = utcnow()
        claim = uuid.uuid4().hex
        free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        async with in_transaction():
            # Whole rows: Tortoise drops FOR UPDATE from values_list() queries.
            candidates = (
                await OutboxMessage.filter(free)
                .order_by("id")
                .limit(self._batch)
                .select_for_update(skip_locked=True)
                .only("id")
            )
            ids = [row.id for row in candidates]
            if not ids:
                return []
            # The lease condition again: on SQLite, this UPDATE is what makes the claim exclusive.
            await OutboxMessage.filter(free, id__in=ids).update(
                lease_until=now + timedelta(seconds=self._lease),
                claim=claim,
                attempts=F("attempts") + 1,
            )
        return await OutboxMessage.filter(claim=claim).order_by("id")

    async def _publish_in_order(self, rows: list[OutboxMessage]) -> list[int]:
        """Publish until one fails; the rest of the group waits, so order is kept."""
        sent = []
        for row in rows:
            if not await self._publish(row):
                break
            sent.append(row.id)
        return sent

    async def _publish(self, row: OutboxMessage) -> bool:
        try:
            if row.kind is OutboxKind.EVENT:
                await self._publisher.publish(
                    topology.EVENTS_EXCHANGE, row.routing_key, _message(row)
                )
                if row.app:
                    # Nobody waiting is normal: outcomes are not mandatory.
                    await self._publisher.publish(
                        topology.OUTCOMES_EXCHANGE,
                        _outcome_key(row),
                        _message(row),
                        mandatory=False,
                    )
            else:
                await self._publisher.publish(row.exchange, row.routing_key, _message(row))
        except PUBLISH_ERRORS as exc:
            log.warning(
                "outbox publish failed; will retry",
                outbox_id=row.id,
                kind=row.kind,
                error=repr(exc),
            )
            return False
        if row.kind is OutboxKind.EVENT:
            self._count_transition(row)
        return True

    def _count_transition(self, row: OutboxMessage) -> None:
        """``kunpay_transitions_total`` for a published event that announces a transition
        (see the module's docstring)."""
        event_id = str(row.headers.get("event_id") or "")
        if event_id in self._counted:
            return
        transition = _transition(row)
        if transition is None:
            return
        if event_id:
            self._counted[event_id] = None
            if len(self._counted) > COUNTED_EVENTS:
                self._counted.popitem(last=False)
        TRANSITIONS.labels(*transition).inc()


def _transition(row: OutboxMessage) -> tuple[str, str] | None:
    """(transaction type, new status) of the transition an event row announces, or None."""
    if row.message_type == EventType.DUPLICATE_DETECTED:
        return None
    try:
        snapshot = json.loads(row.body).get("transaction")
        if snapshot is None:
            return None  # a command rejected for an idempotency conflict: no transaction moved
        return str(snapshot["type"]), str(snapshot["status"])
    except (ValueError, AttributeError, KeyError, TypeError):
        log.warning("outbox event without a readable transaction", outbox_id=row.id)
        return None


def _message(row: OutboxMessage) -> aio_pika.Message:
    return aio_pika.Message(
        body=row.body.encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
        type=row.message_type,
        headers=dict(row.headers),
        timestamp=row.created_at,
    )


def _outcome_key(row: OutboxMessage) -> str:
    assert row.app is not None  # noqa: S101 - checked by the caller
    if row.transaction_id is not None:
        return topology.outcome_routing_key(row.app, row.transaction_id)
    return f"{row.app}.command.{row.headers.get('command_id', '')}"
