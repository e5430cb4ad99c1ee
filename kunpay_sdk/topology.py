"""Every RabbitMQ name and argument kunpay uses, and the one function that declares them.

The worker (and ``kunpay-worker migrate``) declares the topology; the SDK only checks that it
exists and declares its own ``app.<name>.*`` queues.

=============================  ==========================================================
``kunpay.commands``            direct exchange → quorum queue of the same name (commands)
``kunpay.poll``                quorum queue: status checks due now
``kunpay.rpc``                 classic queue: get/verify/... requests, direct reply-to
``kunpay.delay.poll.<ms>``     classic queues with a per-queue TTL and no consumer; expired
``kunpay.delay.commands.<ms>`` messages dead-letter into ``kunpay.poll`` / ``kunpay.commands``
``kunpay.events``              fanout exchange: lifecycle events
``kunpay.events.log``          stream bound to the fanout (events are never unroutable)
``kunpay.outcomes``            topic exchange: each event again as ``<app>.<transaction_id>``
``kunpay.dlx``                 fanout exchange → quorum queue ``kunpay.dead-letter``
=============================  ==========================================================

Queue arguments cannot change on an existing queue (406 PRECONDITION_FAILED): a new tunable
goes into a policy or a new queue name, never into an edited argument here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractChannel, ExchangeType
from pamqp.common import Arguments

__all__ = [
    "APP_NAME",
    "COMMANDS_EXCHANGE",
    "COMMANDS_QUEUE",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "EVENTS_EXCHANGE",
    "EVENTS_LOG_QUEUE",
    "OUTCOMES_EXCHANGE",
    "POLL_QUEUE",
    "REQUESTS_EXCHANGE",
    "RPC_QUEUE",
    "RPC_ROUTING_KEY",
    "Topology",
    "check",
    "declare",
    "delay_queue",
    "outcome_routing_key",
    "subscriber_dead_letter_exchange",
    "subscriber_queue",
    "validate_app_name",
]

COMMANDS_EXCHANGE = "kunpay.commands"
COMMANDS_QUEUE = "kunpay.commands"
POLL_QUEUE = "kunpay.poll"
RPC_QUEUE = "kunpay.rpc"
# Requests reach kunpay.rpc through this exchange (routing key "rpc"), so an app's broker user
# needs no write permission on the default exchange (which reaches every queue).
REQUESTS_EXCHANGE = "kunpay.requests"
RPC_ROUTING_KEY = "rpc"
EVENTS_EXCHANGE = "kunpay.events"
EVENTS_LOG_QUEUE = "kunpay.events.log"
OUTCOMES_EXCHANGE = "kunpay.outcomes"
DEAD_LETTER_EXCHANGE = "kunpay.dlx"
DEAD_LETTER_QUEUE = "kunpay.dead-letter"

DELAY_TARGETS = {"poll": POLL_QUEUE, "commands": COMMANDS_QUEUE}

# Operations routed through kunpay.commands (routing key = operation).
COMMAND_ROUTING_KEYS = ("collect", "disburse", "refund", "retry")

APP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def validate_app_name(app: str) -> str:
    """App names become routing-key segments and queue names: keep them to [A-Za-z0-9_-]."""
    if not APP_NAME.match(app):
        raise ValueError(
            f"broker user {app!r} cannot be a kunpay app name: use 1-64 of A-Z a-z 0-9 _ -"
        )
    return app


def delay_queue(target: str, delay_ms: int) -> str:
    if target not in DELAY_TARGETS:
        raise ValueError(f"unknown delay target {target!r}")
    return f"kunpay.delay.{target}.{delay_ms}"


def outcome_routing_key(app: str, transaction_id: object) -> str:
    return f"{app}.{transaction_id}"


def subscriber_queue(app: str, name: str) -> str:
    if not APP_NAME.match(name):
        raise ValueError(f"subscription name {name!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return f"app.{app}.{name}"


def _work_queue_arguments(delivery_limit: int) -> Arguments:
    # at-least-once dead-lettering needs reject-publish overflow (RabbitMQ ≥ 3.10).
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@dataclass(frozen=True)
class Topology:
    """The tunable parts: delay tiers (each tier is its own queue) and limits."""

    poll_delays_ms: tuple[int, ...] = (15_000, 30_000, 60_000, 120_000, 240_000, 480_000)
    command_delays_ms: tuple[int, ...] = (1_000, 5_000, 30_000, 300_000)
    delivery_limit: int = 20
    events_log_max_age: str = "7D"
    extra_poll_delays_ms: frozenset[int] = field(default_factory=frozenset)

    def delay_tiers(self) -> Iterable[tuple[str, int]]:
        for ms in sorted(set(self.poll_delays_ms) | self.extra_poll_delays_ms):
            yield "poll", ms
        for ms in sorted(set(self.command_delays_ms)):
            yield "commands", ms


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    """Declare kunpay's exchanges and queues (idempotent)."""
    work_args = _work_queue_arguments(topology.delivery_limit)

    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.FANOUT, durable=True)
    dead = await channel.declare_queue(
        DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx)

    commands = await channel.declare_exchange(COMMANDS_EXCHANGE, ExchangeType.DIRECT, durable=True)
    commands_queue = await channel.declare_queue(COMMANDS_QUEUE, durable=True, arguments=work_args)
    for key in COMMAND_ROUTING_KEYS:
        await commands_queue.bind(commands, routing_key=key)

    await channel.declare_queue(POLL_QUEUE, durable=True, arguments=work_args)
    rpc = await channel.declare_queue(RPC_QUEUE, durable=True)
    requests = await channel.declare_exchange(REQUESTS_EXCHANGE, ExchangeType.DIRECT, durable=True)
    await rpc.bind(requests, routing_key=RPC_ROUTING_KEY)

    for target, ms in topology.delay_tiers():
        await channel.declare_queue(
            delay_queue(target, ms),
            durable=True,
            arguments={
                "x-message-ttl": ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": DELAY_TARGETS[target],
            },
        )

    events = await channel.declare_exchange(EVENTS_EXCHANGE, ExchangeType.FANOUT, durable=True)
    log = await channel.declare_queue(
        EVENTS_LOG_QUEUE,
        durable=True,
        arguments={"x-queue-type": "stream", "x-max-age": topology.events_log_max_age},
    )
    await log.bind(events)
    await channel.declare_exchange(OUTCOMES_EXCHANGE, ExchangeType.TOPIC, durable=True)


async def check(connection: aio_pika.abc.AbstractConnection) -> None:
    """Passively check the exchanges the SDK needs; raises aio-pika's ChannelClosed if missing."""
    # A failed passive declare closes its channel: use a throwaway one.
    channel = await connection.channel(publisher_confirms=False)
    try:
        for name in (COMMANDS_EXCHANGE, EVENTS_EXCHANGE, OUTCOMES_EXCHANGE, REQUESTS_EXCHANGE):
            await channel.get_exchange(name, ensure=True)
        await channel.get_queue(RPC_QUEUE, ensure=True)
    finally:
        if not channel.is_closed:
            await channel.close()


def subscriber_dead_letter_exchange(app: str) -> str:
    """The app's own dead-letter exchange: its broker user may declare and write ``app.<app>.*``
    but not the default exchange (which reaches every queue)."""
    return f"app.{validate_app_name(app)}.dlx"


def subscriber_queue_arguments(app: str, name: str, delivery_limit: int) -> Arguments:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": subscriber_dead_letter_exchange(app),
        "x-dead-letter-routing-key": subscriber_queue(app, name) + ".dead-letter",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
