"""events(): typed events, ack on success, the subscriber's own dead-letter queue on failure."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import aio_pika
import pytest

from kunpay_sdk import Event, EventType, KunPayClient
from tests.integration.harness import GOOD, Stack, run, until

pytestmark = pytest.mark.integration


async def test_a_failing_handler_sends_the_event_to_the_subscribers_dead_letter_queue(
    stack: Stack, client: KunPayClient
) -> None:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    subscription = await client.events(queue=name, delivery_limit=2).start()
    attempts: dict[uuid.UUID, int] = {}
    handled: list[Event] = []
    poison_order = f"poison-{uuid.uuid4().hex[:8]}"
    good_order = f"good-{uuid.uuid4().hex[:8]}"
    settled = asyncio.Event()

    async def consume() -> None:
        async for event in subscription:
            async with event.process():
                attempts[event.event_id] = attempts.get(event.event_id, 0) + 1
                if event.transaction and event.transaction.order_id == poison_order:
                    raise RuntimeError("the subscriber's bug")
                handled.append(event)
                if (
                    event.transaction
                    and event.transaction.order_id == good_order
                    and event.type is EventType.SUCCEEDED
                ):
                    settled.set()

    task = asyncio.create_task(consume())
    try:
        for order in (poison_order, good_order):
            await client.collect(
                provider="MTN_CAMEROON",
                amount=Decimal("100"),
                currency="XAF",
                phone_number="670000000",
                order_id=order,
                user_id="u-1",
            )
        async with asyncio.timeout(20):
            await settled.wait()  # the subscription kept running past the poison events

        async with await aio_pika.connect(stack.amqp_url) as connection:
            channel = await connection.channel()
            dead = await channel.get_queue(subscription.queue_name + ".dead-letter")
            poisoned: list[Event] = []
            async with asyncio.timeout(20), dead.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    poisoned.append(Event.model_validate_json(message.body))
                    if {e.type for e in poisoned} >= {EventType.INITIATED, EventType.SUCCEEDED}:
                        break
        assert all(e.transaction and e.transaction.order_id == poison_order for e in poisoned)
        for event in poisoned:
            assert attempts[event.event_id] == 3  # delivery limit 2: three deliveries, then out
        assert not any(e.transaction and e.transaction.order_id == poison_order for e in handled)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await subscription.close()


async def test_a_new_subscriber_catches_up_from_the_events_log_then_follows_its_queue(
    client: KunPayClient,
) -> None:
    since = datetime.now(UTC)
    orders = [f"before-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    earlier = []
    for order in orders:
        accepted = await client.collect(**{**GOOD, "order_id": order})
        earlier.append(accepted.transaction_id)
    for tx in earlier:
        await client.wait(tx, timeout=15)

    # Nobody listened then. A subscriber started now, with since=, gets them first...
    subscription = client.events(queue=f"late-{uuid.uuid4().hex[:8]}", since=since)
    seen: list[Event] = []
    later: uuid.UUID | None = None
    try:
        async with asyncio.timeout(30):
            async for event in subscription:
                async with event.process(reraise=True):
                    seen.append(event)
                mine = {e.transaction.id for e in seen if e.transaction and e.is_final}
                if later is None and set(earlier) <= mine:
                    # ...then what happens next, through its queue.
                    later = (await client.collect(**{**GOOD, "order_id": "after"})).transaction_id
                if later is not None and later in mine:
                    break
    finally:
        await subscription.close()
    ids = [e.event_id for e in seen]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert all(e.occurred_at >= since for e in seen)
    for tx in [*earlier, later]:
        types = [e.type for e in seen if e.transaction and e.transaction.id == tx]
        assert types == [EventType.INITIATED, EventType.SUCCEEDED], (tx, types)


async def test_without_since_a_new_subscriber_gets_only_what_comes_next(
    client: KunPayClient,
) -> None:
    before = await client.collect(**{**GOOD, "order_id": f"old-{uuid.uuid4().hex[:8]}"})
    await client.wait(before.transaction_id, timeout=15)
    subscription = await client.events(queue=f"fresh-{uuid.uuid4().hex[:8]}").start()
    try:
        after = await client.collect(**{**GOOD, "order_id": f"new-{uuid.uuid4().hex[:8]}"})
        async with asyncio.timeout(20):
            async for event in subscription:
                async with event.process(reraise=True):
                    assert event.transaction is not None
                    assert event.transaction.id != before.transaction_id
                if event.transaction.id == after.transaction_id and event.is_final:
                    break
    finally:
        await subscription.close()


async def test_since_must_say_its_time_zone(client: KunPayClient) -> None:
    naive = datetime.fromisoformat("2026-01-01T00:00:00")
    with pytest.raises(ValueError, match="timezone-aware"):
        client.events("q", since=naive)


async def test_a_subscription_outlives_its_connection_dropped_mid_event(
    stack: Stack, client: KunPayClient
) -> None:
    """The broker drops every connection while a handler runs: the ack then has no channel
    to go on. The iteration goes on; the event comes again on the new channel, and so does
    everything published later."""
    subscription = await client.events(queue=f"drop-{uuid.uuid4().hex[:8]}").start()
    reconnected = asyncio.Event()
    client._connection.reconnect_callbacks.add(lambda *_: reconnected.set())
    deliveries: list[Event] = []
    first = await client.collect(**{**GOOD, "order_id": f"drop-{uuid.uuid4().hex[:8]}"})
    later: uuid.UUID | None = None
    try:
        async with asyncio.timeout(60):
            async for event in subscription:
                async with event.process(reraise=True):
                    deliveries.append(event)
                    if len(deliveries) == 1:
                        await run(
                            "rabbitmqctl", "-q", "close_all_connections", "-p", stack.vhost, "test"
                        )
                        await reconnected.wait()
                finals = {e.transaction.id for e in deliveries if e.transaction and e.is_final}
                if later is None and first.transaction_id in finals:
                    later = (
                        await client.collect(**{**GOOD, "order_id": "after-drop"})
                    ).transaction_id
                if later is not None and later in finals:
                    break
    finally:
        await subscription.close()
    ids = [e.event_id for e in deliveries]
    assert ids.count(deliveries[0].event_id) == 2, "the unacked event did not come again"
    for tx in (first.transaction_id, later):
        types = {e.type for e in deliveries if e.transaction and e.transaction.id == tx}
        assert types == {EventType.INITIATED, EventType.SUCCEEDED}, (tx, types)


async def test_closing_a_subscription_ends_an_iteration_waiting_on_it(
    client: KunPayClient,
) -> None:
    subscription = await client.events(queue=f"closing-{uuid.uuid4().hex[:8]}").start()

    async def iterate() -> list[Event]:
        return [event async for event in subscription]

    task = asyncio.create_task(iterate())

    async def waiting() -> bool:
        return subscription._queue_next is not None

    await until(waiting, 5)
    await subscription.close()
    async with asyncio.timeout(5):
        assert await task == []
    with pytest.raises(RuntimeError, match="closed"):
        await subscription.start()
