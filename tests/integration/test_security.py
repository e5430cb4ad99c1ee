"""Broker users and per-app permissions on the real broker: `kunpay-worker broker-setup` makes
the users (through the management API), the worker runs as its own user, and an app can do
what an app does and nothing else."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiohttp
import aiormq.exceptions
import pytest

from kunpay_sdk import EventType, KunPayClient, RemoteError, topology
from tests.integration.harness import GOOD, Stack, run

pytestmark = pytest.mark.integration

MANAGEMENT = "http://localhost:15672"
ADMIN = {"Authorization": aiohttp.encode_basic_auth("guest", "guest")}


@dataclass
class Secured:
    stack: Stack
    shop: str
    payer: str
    worker_url: str
    shop_url: str  # payouts off (not in KUNPAY_APPS)
    payer_url: str  # payouts on, at most 10000 at once
    operator_url: str
    setup_env: dict[str, str]


def amqp(user: str, password: str, vhost: str) -> str:
    return f"amqp://{user}:{password}@localhost:5672/{quote(vhost, safe='')}"


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    suffix = uuid.uuid4().hex[:8]
    shop, payer, worker, operator = (
        f"shop-{suffix}",
        f"payer-{suffix}",
        f"kw-{suffix}",
        f"ops-{suffix}",
    )
    stack = await Stack.create(
        "sqlite",
        tmp_path,
        KUNPAY_APPS=json.dumps({payer: {"payouts": True, "max_amount": "10000"}}),
    )
    setup_env = {
        "KUNPAY_AMQP_URL": amqp(worker, "worker-pw", stack.vhost),
        "KUNPAY_BROKER_SETUP__MANAGEMENT_URL": MANAGEMENT,
        "KUNPAY_BROKER_SETUP__OPERATOR_USER": operator,
        "KUNPAY_BROKER_SETUP__OPERATOR_PASSWORD": "ops-pw",
        "KUNPAY_BROKER_SETUP__APPS": json.dumps({shop: "shop-pw", payer: "payer-pw"}),
    }
    secured = Secured(
        stack,
        shop,
        payer,
        setup_env["KUNPAY_AMQP_URL"],
        amqp(shop, "shop-pw", stack.vhost),
        amqp(payer, "payer-pw", stack.vhost),
        amqp(operator, "ops-pw", stack.vhost),
        setup_env,
    )
    try:
        yield secured
    finally:
        await stack.close()
        async with aiohttp.ClientSession(headers=ADMIN) as http:
            for user in (shop, payer, worker, operator):
                async with http.delete(f"{MANAGEMENT}/api/users/{user}"):
                    pass


async def broker_setup(secured: Secured) -> str:
    return await run(
        sys.executable,
        "-m",
        "kunpay_worker.cli",
        "broker-setup",
        env={**secured.stack.env, **secured.setup_env},
    )


async def refused(action: Awaitable[object]) -> bool:
    """Whether the broker refuses ``action`` with ACCESS_REFUSED."""
    try:
        await action
    except aiormq.exceptions.ChannelAccessRefused:
        return True
    return False


async def ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
    return None


async def test_broker_setup_creates_the_users_and_can_run_again(secured: Secured) -> None:
    first = await broker_setup(secured)
    again = await broker_setup(secured)
    assert first == again
    assert "impersonator" in first
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        vhost = quote(secured.stack.vhost, safe="")
        async with http.get(f"{MANAGEMENT}/api/vhosts/{vhost}/permissions") as resp:
            users = {p["user"] for p in await resp.json()}
    assert {"guest"} < users
    assert len(users) == 5  # guest (the test's own), worker, operator, two apps


async def test_an_app_pays_through_its_own_user_and_can_do_nothing_else(secured: Secured) -> None:
    await broker_setup(secured)
    stack = secured.stack
    worker = await stack.start_worker(KUNPAY_AMQP_URL=secured.worker_url)
    assert not [r for r in worker.lines if "impersonator" in str(r.get("event"))]

    async with await KunPayClient.connect(secured.shop_url) as client:
        accepted = await client.collect(**GOOD)
        outcome = await client.wait(accepted.transaction_id, timeout=15)
        assert outcome.type is EventType.SUCCEEDED
        assert (await client.get(accepted.transaction_id)).id == accepted.transaction_id
        subscription = client.events(queue="orders")
        await subscription.start()
        await subscription.close()

        # Payouts are off for this app: rejected, nothing sent.
        payout = await client.disburse(**{**GOOD, "order_id": "payout-1"})
        rejected = await client.wait(payout.transaction_id, timeout=15)
        assert rejected.type is EventType.REJECTED
        assert rejected.reason is not None
        assert rejected.reason.startswith("NOT_PERMITTED")
        with pytest.raises(RemoteError, match="payouts are not enabled"):
            await client.balance("MTN_CAMEROON")

    connection = await aio_pika.connect(secured.shop_url)
    async with connection:
        event = aio_pika.Message(b'{"forged": true}')
        channel = await connection.channel()
        events = await channel.get_exchange(topology.EVENTS_EXCHANGE, ensure=False)
        assert await refused(events.publish(event, routing_key=""))
        channel = await connection.channel()
        assert await refused(
            channel.default_exchange.publish(event, routing_key=topology.POLL_QUEUE)
        )
        channel = await connection.channel()
        dead = await channel.get_queue(topology.DEAD_LETTER_QUEUE, ensure=False)
        assert await refused(dead.consume(ignore))
        channel = await connection.channel()
        own = await channel.declare_queue(f"app.{secured.shop}.peek", exclusive=True)
        outcomes = await channel.get_exchange(topology.OUTCOMES_EXCHANGE, ensure=False)
        assert await refused(own.bind(outcomes, routing_key=f"{secured.payer}.#"))
        channel = await connection.channel()
        assert await refused(channel.declare_queue("kunpay.mine"))


async def test_an_app_allowed_payouts_pays_out_within_its_limit(secured: Secured) -> None:
    await broker_setup(secured)
    await secured.stack.start_worker(KUNPAY_AMQP_URL=secured.worker_url)
    async with await KunPayClient.connect(secured.payer_url) as client:
        payout = await client.disburse(**{**GOOD, "order_id": "payout-2"})
        assert (await client.wait(payout.transaction_id, timeout=15)).type is EventType.SUCCEEDED
        big = await client.collect(**{**GOOD, "order_id": "big", "amount": Decimal("10001")})
        rejected = await client.wait(big.transaction_id, timeout=15)
        assert rejected.type is EventType.REJECTED
        assert rejected.reason is not None
        assert rejected.reason.startswith("AMOUNT_OVER_LIMIT")
        assert (await client.balance("MTN_CAMEROON")).amount > 0


async def test_operators_read_dead_letters_and_publish_nothing(secured: Secured) -> None:
    await broker_setup(secured)
    await secured.stack.start_worker(KUNPAY_AMQP_URL=secured.worker_url)  # declares topology
    connection = await aio_pika.connect(secured.operator_url)
    async with connection:
        channel = await connection.channel()
        dead = await channel.get_queue(topology.DEAD_LETTER_QUEUE, ensure=False)
        await dead.get(fail=False)  # allowed: browsing dead letters
        commands = await channel.get_exchange(topology.COMMANDS_EXCHANGE, ensure=False)
        assert await refused(commands.publish(aio_pika.Message(b"{}"), routing_key="collect"))


async def test_events_an_app_routes_into_the_commands_queue_are_dropped(secured: Secured) -> None:
    """RabbitMQ lets an app bind kunpay.commands (the queue shares the exchange's name, which
    the app may write) to kunpay.events: the worker drops what comes that way."""
    await broker_setup(secured)
    worker = await secured.stack.start_worker(KUNPAY_AMQP_URL=secured.worker_url)
    connection = await aio_pika.connect(secured.shop_url)
    async with connection:
        channel = await connection.channel()
        commands = await channel.get_queue(topology.COMMANDS_QUEUE, ensure=False)
        events = await channel.get_exchange(topology.EVENTS_EXCHANGE, ensure=False)
        await commands.bind(events)
    async with await KunPayClient.connect(secured.shop_url) as client:
        accepted = await client.collect(**GOOD)
        assert (await client.wait(accepted.transaction_id, timeout=15)).type is EventType.SUCCEEDED
    await worker.wait_log(
        lambda r: str(r.get("event")).startswith("dropping messages routed into the commands")
    )
    assert await secured.stack.db.fetch("SELECT id FROM dead_letters") == []
