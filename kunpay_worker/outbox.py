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

# After a wake-up, the relay waits this long (s) before draining, so that the rows of the
# handlers that commit meanwhile share one claim, publish and delete pass instead of one pass
# per commit. Short against the poll delays and the SDK's waits; rows are published in the
# same order and only deleted once confirmed, as without it.
DEBOUNCE = 0.005


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
            if self._wake.is_set() and not stop.is_set():
                await asyncio.sleep(DEBOUNCE)
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
            superseded = [row.id for g in groups.values() for row in _superseded_polls(g)]
            skip = set(superseded)
            results = await asyncio.gather(
                *(
                    self._publish_in_order([r for r in g if r.id not in skip])
                    for g in groups.values()
                )
            )
            sent = [row_id for group in results for row_id in group]
            done = superseded + sent
            if done:
                await OutboxMessage.filter(id__in=done).delete()
            total += len(sent)
            self.published += len(sent)
            if len(done) < len(rows):
                return total  # the rest waits for its lease to expire
            if len(rows) < self._batch:
                # That was all there was: rows committed since then come with their own
                # notify(), which makes run() drain again at once.
                return total

    async def backlog(self) -> int:
        return await OutboxMessage.all().count()

    async def _claim(self) -> list[OutboxMessage]:
        now = utcnow()
        claim = uuid.uuid4().hex
        free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        lease_until = now + timedelta(seconds=self._lease)
        async with in_transaction():
            # Whole rows: Tortoise drops FOR UPDATE from values_list() queries.
            candidates = (
                await OutboxMessage.filter(free)
                .order_by("id")
                .limit(self._batch)
                .select_for_update(skip_locked=True)
            )
            ids = [row.id for row in candidates]
            if not ids:
                return []
            # The lease condition again: on SQLite, this UPDATE is what makes the claim exclusive.
            claimed = await OutboxMessage.filter(free, id__in=ids).update(
                lease_until=lease_until,
                claim=claim,
                attempts=F("attempts") + 1,
            )
        if claimed == len(ids):
            # Every candidate is ours: the rows as read, with the claim (nothing else changes
            # a claimed row but its claimant).
            for row in candidates:
                row.lease_until, row.claim, row.attempts = lease_until, claim, row.attempts + 1
            return candidates
        # Someone else claimed some of them meanwhile: ours are the rows with our claim.
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
                publishes = [
                    self._publisher.publish(
                        topology.EVENTS_EXCHANGE, row.routing_key, _message(row)
                    )
                ]
                if row.app:
                    # Nobody waiting is normal: outcomes are not mandatory.
                    publishes.append(
                        self._publisher.publish(
                            topology.OUTCOMES_EXCHANGE,
                            _outcome_key(row),
                            _message(row),
                            mandatory=False,
                        )
                    )
                # Side by side: one wait for the broker's confirms, not two (RabbitMQ confirms
                # a persistent message once it is on disk, up to a few hundred ms under load).
                # If either fails, both go again later (subscribers dedupe on event_id).
                await asyncio.gather(*publishes)
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


def _poll_seq(row: OutboxMessage) -> int | None:
    """The ``poll_seq`` of a scheduled check's row (None for any other row)."""
    if row.kind is not OutboxKind.MESSAGE or row.message_type != "poll":
        return None
    seq = row.headers.get("poll_seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _superseded_polls(rows: list[OutboxMessage]) -> list[OutboxMessage]:
    """One transaction's scheduled checks that a newer one in ``rows`` supersedes.

    The newer row was committed with the transaction's ``poll_seq`` moved past theirs, and
    ``poll_seq`` only ever grows: the worker would drop them as stale on delivery (Engine.check),
    so they are deleted unpublished. (A duplicate command's check during a send, which the
    send's record replaces a few milliseconds later.)"""
    seqs = [(seq, row) for row in rows if (seq := _poll_seq(row)) is not None]
    if len(seqs) < 2:
        return []
    newest = max(seq for seq, _ in seqs)
    return [row for seq, row in seqs if seq < newest]


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
