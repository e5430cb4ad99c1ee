"""What the SDK raises when the broker does not take a command, and how the worker treats
messages that are not commands."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import ExchangeType

from kunpay_sdk import CommandNacked, CommandUnroutable, KunPayClient, OutcomeUnknown, topology
from tests.integration.harness import GOOD, Stack, create_vhost, delete_vhost, until

pytestmark = pytest.mark.integration


@pytest.fixture
async def bare_vhost() -> AsyncIterator[str]:
    name, url = await create_vhost()
    try:
        yield url
    finally:
        await delete_vhost(name)


async def fake_topology(url: str, *, commands_queue: dict[str, Any] | None) -> None:
    """Just enough for connect(): the exchanges and the rpc queue; the commands queue as given."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        commands = await channel.declare_exchange(topology.COMMANDS_EXCHANGE, ExchangeType.DIRECT)
        await channel.declare_exchange(topology.EVENTS_EXCHANGE, ExchangeType.FANOUT)
        await channel.declare_exchange(topology.OUTCOMES_EXCHANGE, ExchangeType.TOPIC)
        rpc = await channel.declare_queue(topology.RPC_QUEUE)
        requests = await channel.declare_exchange(topology.REQUESTS_EXCHANGE, ExchangeType.DIRECT)
        await rpc.bind(requests, routing_key=topology.RPC_ROUTING_KEY)
        if commands_queue is not None:
            queue = await channel.declare_queue(topology.COMMANDS_QUEUE, arguments=commands_queue)
            await queue.bind(commands, routing_key="collect")


async def test_a_command_no_queue_takes_raises_unroutable_with_its_ids(bare_vhost: str) -> None:
    await fake_topology(bare_vhost, commands_queue=None)
    async with await KunPayClient.connect(bare_vhost) as client:
        with pytest.raises(CommandUnroutable) as caught:
            await client.collect(**GOOD)
    assert caught.value.idempotency_key
    assert isinstance(caught.value.transaction_id, uuid.UUID)


async def test_a_command_the_broker_refuses_raises_nacked(bare_vhost: str) -> None:
    # A full queue that rejects publishes: the broker answers basic.nack.
    await fake_topology(
        bare_vhost, commands_queue={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    async with await KunPayClient.connect(bare_vhost) as client:
        with pytest.raises(CommandNacked) as caught:
            await client.collect(**GOOD)
    assert caught.value.command_id


async def test_a_lost_channel_while_publishing_is_an_unknown_outcome(stack: Stack) -> None:
    async with await stack.client() as client:
        assert client._publish_channel is not None
        await client._publish_channel.close()
        with pytest.raises(OutcomeUnknown) as caught:
            await client.collect(**GOOD)
    assert caught.value.idempotency_key


@pytest.mark.parametrize(
    ("body", "user_id", "reason"),
    [
        (b"\xff not json", "guest", "malformed"),
        (b'{"schema_version": 1, "operation": "collect"}', "guest", "malformed"),
        (b'{"schema_version": 99}', "guest", "malformed"),
        (None, None, "no_app_identity"),
        (None, "guest", "transaction_id_mismatch"),
    ],
)
async def test_what_is_not_a_command_is_dead_lettered_with_a_reason(
    stack: Stack, body: bytes | None, user_id: str | None, reason: str
) -> None:
    marker = str(uuid.uuid4())
    if body is None:
        body = json.dumps(
            {
                "schema_version": 1,
                "operation": "collect",
                "command_id": str(uuid.uuid4()),
                "transaction_id": str(uuid.uuid4()),  # not uuid5(app, collect, key)
                "idempotency_key": "k",
                "provider": "MTN_CAMEROON",
                "amount": "5000",
                "currency": "XAF",
                "phone_number": "670000000",
                "order_id": "o",
                "user_id": "u",
                "issued_at": "2026-01-01T00:00:00Z",
            }
        ).encode()
    async with await aio_pika.connect(stack.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.COMMANDS_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(
                body,
                message_id=marker,
                user_id=user_id,
                headers={"marker": marker},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="collect",
        )

    # The worker copies the dead letter into its table (then acks it).
    async def stored() -> bool:
        rows = await stack.db.fetch("SELECT id FROM dead_letters WHERE message_id = $1", marker)
        return bool(rows)

    await until(stored, timeout=15)
    (row,) = await stack.db.fetch(
        "SELECT reason, exchange, routing_key, attempts, app, body FROM dead_letters "
        "WHERE message_id = $1",
        marker,
    )
    assert (row["reason"], row["exchange"], row["routing_key"], row["attempts"]) == (
        reason,
        topology.COMMANDS_EXCHANGE,
        "collect",
        1,
    )
    assert row["app"] == user_id
    assert bytes(row["body"]) == body
    # The worker keeps going: a real payment still completes.
    async with await stack.client() as client:
        accepted = await client.collect(**{**GOOD, "order_id": marker})
        assert (await client.wait(accepted.transaction_id, timeout=15)).type == "payment.succeeded"
