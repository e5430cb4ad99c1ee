"""collect() → payment.initiated → payment.succeeded, through real RabbitMQ, the worker process,
the sandbox and the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import aio_pika
import pytest

from kunpay_sdk import EventType, KunPayClient, Status, TransactionNotFound
from kunpay_sdk.contracts import CollectCommand, transaction_id_for, utcnow
from tests.integration.harness import EventLog, Stack

pytestmark = pytest.mark.integration


def order() -> str:
    return f"order-{uuid.uuid4().hex[:8]}"


async def collect(client: KunPayClient, number: str = "670000000", **kwargs: Any) -> Any:
    values: dict[str, Any] = {
        "provider": "MTN_CAMEROON",
        "amount": Decimal("5000"),
        "currency": "XAF",
        "phone_number": number,
        "order_id": order(),
        "user_id": "u-1",
    }
    values.update(kwargs)
    return await client.collect(**values)


async def handled(stack: Stack, command_id: uuid.UUID) -> dict[str, Any]:
    """Await the worker's canonical log line for a command."""
    worker = stack.workers[-1]
    return await worker.wait_log(
        lambda r: r.get("event") == "command handled" and r.get("command_id") == str(command_id)
    )


async def test_a_collection_is_initiated_then_succeeds(
    stack: Stack, client: KunPayClient, events: EventLog
) -> None:
    accepted = await collect(client, correlation_id="corr-1")
    final = await events.final(accepted.transaction_id)

    # Delivery order is not promised across events; the sequence is.
    received = sorted(events.of(accepted.transaction_id), key=lambda e: e.sequence)
    assert [e.type for e in received] == [EventType.INITIATED, EventType.SUCCEEDED]
    initiated = received[0]
    assert initiated.transaction is not None
    assert initiated.transaction.status is Status.PENDING
    assert final.sequence == initiated.sequence + 1
    assert final.correlation_id == "corr-1"
    tx = final.transaction
    assert tx is not None
    assert tx.status is Status.COMPLETED
    assert tx.amount == Decimal("5000")
    assert tx.currency == "XAF"
    assert tx.phone_number == "+237670000000"
    assert tx.provider == "MTN_CAMEROON"
    assert tx.backend == "MTN_MOMO"
    assert tx.provider_reference is not None
    assert uuid.UUID(tx.provider_reference).version == 4
    assert uuid.UUID(tx.provider_reference) != accepted.transaction_id
    assert tx.provider_transaction_id
    assert tx.idempotency_key == accepted.idempotency_key
    assert stack.mtn.initiations[tx.provider_reference] == 1

    # The same transaction through get(), and wait() agrees with the events.
    current = await client.get(accepted.transaction_id)
    assert current.status is Status.COMPLETED
    assert (await client.wait(accepted.transaction_id, timeout=5)).event_id == final.event_id


async def test_a_failing_number_fails_with_the_providers_reason(
    client: KunPayClient, events: EventLog
) -> None:
    accepted = await collect(client, "670000002")
    final = await client.wait(accepted.transaction_id, timeout=15)
    assert final.type is EventType.FAILED
    assert final.transaction is not None
    assert final.transaction.status is Status.FAILED
    assert final.transaction.failure_reason == "NOT_ENOUGH_FUNDS"
    assert (await events.final(accepted.transaction_id)).event_id == final.event_id


async def test_the_same_command_published_twice_charges_once(
    stack: Stack, client: KunPayClient, events: EventLog
) -> None:
    key = str(uuid.uuid4())
    command = CollectCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for(client.app, "collect", key),
        idempotency_key=key,
        provider="MTN_CAMEROON",
        amount=Decimal("5000"),
        currency="XAF",
        phone_number="+237670000000",
        order_id=order(),
        user_id="u-1",
        issued_at=utcnow(),
    )
    async with await aio_pika.connect(stack.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("kunpay.commands")
        for _ in range(2):
            await exchange.publish(
                aio_pika.Message(
                    command.model_dump_json().encode(),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=str(uuid.uuid4()),
                    user_id="guest",
                ),
                routing_key="collect",
            )
    await events.final(command.transaction_id)
    await handled(stack, command.command_id)
    intakes = await stack.db.fetch(
        "SELECT outcome FROM inbox WHERE command_id = $1", str(command.command_id)
    )
    assert len(intakes) == 1  # one inbox row per command id, however often it arrives

    await assert_charged_once(stack, client, events, command.transaction_id)


async def test_the_same_idempotency_key_twice_is_one_transaction(
    stack: Stack, client: KunPayClient, events: EventLog
) -> None:
    first = await collect(client, idempotency_key="same-key-" + uuid.uuid4().hex)
    await events.final(first.transaction_id)
    tx = await client.get(first.transaction_id)
    # The same content again (a retry after an unknown outcome, say): same order id.
    second = await collect(client, idempotency_key=first.idempotency_key, order_id=tx.order_id)
    assert second.transaction_id == first.transaction_id
    assert second.command_id != first.command_id
    record = await handled(stack, second.command_id)
    assert record["intake"] == "DUPLICATE"
    await assert_charged_once(stack, client, events, first.transaction_id)


async def assert_charged_once(
    stack: Stack, client: KunPayClient, events: EventLog, transaction_id: uuid.UUID
) -> None:
    tx = await client.get(transaction_id)
    assert tx.status is Status.COMPLETED
    assert tx.provider_reference is not None
    assert stack.mtn.initiations[tx.provider_reference] == 1
    rows = await stack.db.fetch("SELECT id FROM transactions WHERE id = $1", str(transaction_id))
    assert len(rows) == 1
    types = [e.type for e in events.of(transaction_id)]
    assert types.count(EventType.SUCCEEDED) == 1
    assert types.count(EventType.INITIATED) == 1


async def test_the_same_key_with_other_content_is_rejected_without_touching_the_transaction(
    stack: Stack, client: KunPayClient, events: EventLog
) -> None:
    first = await collect(client)
    await events.final(first.transaction_id)
    conflicting = await collect(
        client, idempotency_key=first.idempotency_key, amount=Decimal("9999")
    )
    assert conflicting.transaction_id == first.transaction_id
    rejection = await events.wait_for(
        lambda e: e.type is EventType.REJECTED and e.command_id == conflicting.command_id
    )
    assert rejection.transaction is None
    assert rejection.reason is not None
    assert "IDEMPOTENCY_CONFLICT" in rejection.reason
    tx = await client.get(first.transaction_id)
    assert tx.status is Status.COMPLETED
    assert tx.amount == Decimal("5000")
    assert (await client.wait(first.transaction_id, timeout=5)).type is EventType.SUCCEEDED


async def test_wait_after_the_outcome_returns_it(client: KunPayClient, events: EventLog) -> None:
    accepted = await collect(client)
    published = await events.final(accepted.transaction_id)
    # Long after the event went out: wait() asks get() first.
    outcome = await client.wait(accepted.transaction_id, timeout=5)
    assert outcome.event_id == published.event_id
    assert outcome.type is EventType.SUCCEEDED


async def test_wait_before_the_outcome_gets_it_when_it_comes(client: KunPayClient) -> None:
    accepted = await collect(client)
    outcome = await client.wait(accepted.transaction_id, timeout=15)
    assert outcome.type is EventType.SUCCEEDED


async def test_wait_times_out_on_a_payment_that_stays_pending(client: KunPayClient) -> None:
    accepted = await collect(client, "670000010")
    with pytest.raises(TimeoutError):
        await client.wait(accepted.transaction_id, timeout=1.5)
    assert (await client.get(accepted.transaction_id)).status is Status.PENDING


async def test_get_of_an_unknown_transaction_is_not_found(client: KunPayClient) -> None:
    with pytest.raises(TransactionNotFound):
        await client.get(uuid.uuid4())


async def test_a_send_with_a_server_error_is_looked_up_and_resent_once(
    stack: Stack, client: KunPayClient
) -> None:
    # 670000020: MTN answers the first request to pay 500 without registering it.
    accepted = await collect(client, "670000020")
    outcome = await client.wait(accepted.transaction_id, timeout=20)
    assert outcome.type is EventType.SUCCEEDED
    assert outcome.transaction is not None
    assert outcome.transaction.provider_reference is not None
    assert stack.mtn.requests[outcome.transaction.provider_reference] == 2
    assert stack.mtn.initiations[outcome.transaction.provider_reference] == 1


async def test_an_accepted_send_answered_500_is_not_sent_again(
    stack: Stack, client: KunPayClient
) -> None:
    # 670000021: MTN registers the payment but answers 500: the lookup finds it.
    accepted = await collect(client, "670000021")
    outcome = await client.wait(accepted.transaction_id, timeout=20)
    assert outcome.type is EventType.SUCCEEDED
    assert outcome.transaction is not None
    assert outcome.transaction.provider_reference is not None
    assert stack.mtn.initiations[outcome.transaction.provider_reference] == 1


async def test_many_concurrent_collections_all_complete(client: KunPayClient) -> None:
    accepted = await asyncio.gather(*(collect(client) for _ in range(30)))
    outcomes = await asyncio.gather(*(client.wait(a.transaction_id, timeout=30) for a in accepted))
    assert {o.type for o in outcomes} == {EventType.SUCCEEDED}
