"""Workers stopped at the worst moments: killed while the provider holds the reply, and SIGTERM
under load."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from kunpay_sdk import EventType, Status
from tests.integration.harness import GOOD, EventLog, Stack

pytestmark = pytest.mark.integration


async def test_a_worker_killed_while_the_provider_holds_the_reply_charges_once(
    own_stack: Stack,
) -> None:
    stack = own_stack
    first = await stack.start_worker()
    async with await stack.client() as client:
        events = await EventLog(client).start()
        try:
            accepted = await client.collect(
                provider="MTN_CAMEROON",
                amount=Decimal("5000"),
                currency="XAF",
                phone_number="670000030",  # the sandbox registers it and holds the reply
                order_id="order-held",
                user_id="u-1",
            )
            async with asyncio.timeout(15):
                await stack.mtn.wait_held(1)
            await first.kill()

            second = await stack.start_worker()
            outcome = await client.wait(accepted.transaction_id, timeout=30)

            assert outcome.type is EventType.SUCCEEDED
            assert outcome.transaction is not None
            assert outcome.transaction.status is Status.COMPLETED
            reference = outcome.transaction.provider_reference
            assert reference is not None
            assert stack.mtn.requests[reference] == 1  # exactly one request to pay
            # The replacement got the unacked command back and did not send it again.
            record = await second.wait_log(
                lambda r: (
                    r.get("event") == "command handled"
                    and r.get("command_id") == str(accepted.command_id)
                )
            )
            assert record["intake"] == "REDELIVERY"
            await events.final(accepted.transaction_id)
            types = [e.type for e in events.of(accepted.transaction_id)]
            assert types.count(EventType.SUCCEEDED) == 1
            assert second.errors() == []
        finally:
            await events.close()


async def test_sigterm_under_load_loses_and_duplicates_nothing(own_stack: Stack) -> None:
    """SIGTERM while commands keep arriving and sends and checks are in flight: the worker
    finishes what it holds and exits 0, the next worker completes the rest; one request per
    payment, one outcome event per payment."""
    stack = own_stack
    # A window smaller than the load, so that the stop lands mid-load and the next worker has
    # work left (with the default prefetch the first worker would take in all of it).
    worker = await stack.start_worker(KUNPAY_PREFETCH="32")
    count = 60
    async with await stack.client() as client:
        events = await EventLog(client).start()
        try:

            async def publish() -> list[uuid.UUID]:
                return [
                    (await client.collect(**{**GOOD, "order_id": f"load-{i}"})).transaction_id
                    for i in range(count)
                ]

            publishing = asyncio.create_task(publish())
            await worker.wait_log(lambda r: r.get("event") == "command handled")
            assert await worker.stop() == 0, worker.tail()
            handled = sum(1 for r in worker.lines if r.get("event") == "command handled")
            ids = await publishing

            await stack.start_worker()
            finals = [await events.final(tx, timeout=30) for tx in ids]
        finally:
            await events.close()
    assert 0 < handled < count  # stopped mid-load: the next worker had work left
    assert [f.type for f in finals] == [EventType.SUCCEEDED] * count
    for tx in ids:
        outcomes = [e for e in events.of(tx) if e.is_final]
        assert len(outcomes) == 1, (tx, [e.type for e in events.of(tx)])
    references = await stack.db.fetch("SELECT provider_reference FROM transactions")
    assert len(references) == count
    assert all(stack.mtn.initiations[str(r["provider_reference"])] == 1 for r in references)
    assert not worker.errors(), worker.tail()
