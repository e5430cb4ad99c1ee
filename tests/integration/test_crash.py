"""A worker killed at the worst moment: the provider has the request, the worker never heard."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from kunpay_sdk import EventType, Status
from tests.integration.harness import EventLog, Stack

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
