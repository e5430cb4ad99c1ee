"""Collect 5000 XAF twice through kunpay: once from a number that pays, once from one that
cannot (the sandbox's magic numbers), printing each lifecycle event as it arrives.

    python examples/collect.py [amqp_url]
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from decimal import Decimal

from kunpay_sdk import Event, KunPayClient

PAYS = "670000000"  # the sandbox completes this payment
NO_FUNDS = "670000002"  # the sandbox fails it: NOT_ENOUGH_FUNDS


def show(event: Event, label: str) -> None:
    tx = event.transaction
    if tx is None:  # a command-level rejection: not one of ours here
        return
    line = f"  [{label}] {event.type:<20} status={tx.status:<9} sequence={event.sequence}"
    if tx.provider_reference and event.is_final:
        line += f" provider_reference={tx.provider_reference}"
    if tx.failure_reason:
        line += f" reason={tx.failure_reason}"
    print(line, flush=True)


async def main(amqp_url: str) -> int:
    async with await KunPayClient.connect(amqp_url) as client:
        # Our subscription is bound before we publish, so no event is missed. Events of other
        # runs left in the queue are skipped below.
        subscription = await client.events(queue="demo").start()
        events = asyncio.Queue[Event]()

        async def listen() -> None:
            async for event in subscription:
                async with event.process():
                    await events.put(event)

        listener = asyncio.create_task(listen())
        labels = {}
        for label, number in (("pays", PAYS), ("no funds", NO_FUNDS)):
            accepted = await client.collect(
                provider="MTN_CAMEROON",
                amount=Decimal("5000"),
                currency="XAF",
                phone_number=number,
                order_id=f"demo-{uuid.uuid4().hex[:8]}",
                user_id="demo-user",
            )
            labels[accepted.transaction_id] = label
            print(f"collect 5000 XAF from {number}: transaction {accepted.transaction_id}")

        finals: dict[uuid.UUID, Event] = {}
        async with asyncio.timeout(120):
            while len(finals) < len(labels):
                event = await events.get()
                if event.transaction is None or event.transaction.id not in labels:
                    continue  # another app's or run's event
                show(event, labels[event.transaction.id])
                if event.is_final:
                    finals[event.transaction.id] = event
        listener.cancel()
        await subscription.close()

        outcomes = {labels[t]: e.type for t, e in finals.items()}
        ok = outcomes == {"pays": "payment.succeeded", "no funds": "payment.failed"}
        print("demo ok" if ok else f"unexpected outcomes: {outcomes}")
        return 0 if ok else 1


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost:5672/"
    sys.exit(asyncio.run(main(url)))
