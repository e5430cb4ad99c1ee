"""events(): typed events, ack on success, the subscriber's own dead-letter queue on failure."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import aio_pika
import pytest

from kunpay_sdk import Event, EventType, KunPayClient
from tests.integration.harness import Stack

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
