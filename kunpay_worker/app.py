"""The worker process: wires the broker, database, providers, outbox relay; shuts down cleanly."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiohttp
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiohttp import web
from tortoise import Tortoise

from kunpay_sdk import topology
from kunpay_worker import dlq
from kunpay_worker.domain.schedule import to_ms
from kunpay_worker.engine import Engine
from kunpay_worker.handlers import handle_command
from kunpay_worker.handlers.rpc import Answers, handle_rpc
from kunpay_worker.janitor import Janitor
from kunpay_worker.messaging import Dispatcher, Publisher, can_impersonate
from kunpay_worker.metrics import Metrics
from kunpay_worker.outbox import OutboxRelay
from kunpay_worker.polling import handle_poll
from kunpay_worker.providers.pawapay.callbacks import CallbackVerifier
from kunpay_worker.providers.pawapay.client import PawapayClient
from kunpay_worker.providers.registry import build_backends, configuration_problems
from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage import repository as repo
from kunpay_worker.webhooks import Webhooks

__all__ = ["ConfigurationError", "Worker", "broker_topology", "declare_topology"]

log = structlog.get_logger("kunpay.worker")


class ConfigurationError(RuntimeError):
    pass


def broker_topology(settings: Settings) -> topology.Topology:
    return topology.Topology(
        poll_delays_ms=tuple(to_ms(d) for d in settings.poll.delays),
        extra_poll_delays_ms=frozenset(to_ms(d) for d in settings.poll.late_delays),
        command_delays_ms=tuple(to_ms(d) for d in settings.command_retry_delays),
        delivery_limit=settings.delivery_limit,
    )


def poll_tiers_ms(shape: topology.Topology) -> list[int]:
    return sorted(set(shape.poll_delays_ms) | shape.extra_poll_delays_ms)


async def declare_topology(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel, broker_topology(settings))


class Worker:
    """``kunpay-worker run``: consume commands, polls and requests until ``stop`` is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event, *, apply_migrations: bool = False) -> None:
        settings = self.settings
        problems = configuration_problems(settings)
        if problems:
            raise ConfigurationError("; ".join(problems))
        if apply_migrations:
            await db.migrate(settings)
        await db.init(settings)
        try:
            pending = await db.pending_migrations(settings)
            if pending:
                raise ConfigurationError(
                    f"the database needs migrations {pending}: run `kunpay-worker migrate`"
                )
            connection = await aio_pika.connect_robust(
                settings.amqp_url.get_secret_value(),
                client_properties={"connection_name": "kunpay-worker"},
            )
            try:
                await self._serve(connection, stop)
            finally:
                await connection.close()
        finally:
            await db.close()

    async def _serve(self, connection: AbstractRobustConnection, stop: asyncio.Event) -> None:
        settings = self.settings
        shape = broker_topology(settings)
        setup = await connection.channel()
        await topology.declare(setup, shape)
        await setup.close()

        publisher = Publisher(
            await connection.channel(publisher_confirms=True, on_return_raises=True),
            # Well inside the outbox lease, so a slow confirm is not published twice.
            timeout=settings.outbox_lease / 3,
        )
        timeout = aiohttp.ClientTimeout(
            total=settings.http.total_timeout, connect=settings.http.connect_timeout
        )
        # The connection pool never is the limit (aiohttp's default is 100 connections): each
        # backend's call slots are (KUNPAY_HTTP__MAX_CONCURRENT_CALLS), with their bounded wait.
        connector = aiohttp.TCPConnector(
            limit=settings.http.max_concurrent_calls * max(len(settings.enabled_backends()), 1)
        )
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            relay = OutboxRelay(
                publisher,
                batch=settings.outbox_batch,
                sweep_interval=settings.outbox_sweep_interval,
                lease=settings.outbox_lease,
            )
            engine = Engine(
                settings=settings,
                backends=build_backends(settings, session, repo.record_attempt),
                plan=repo.PollPlan(
                    delays=settings.poll.delays,
                    tiers_ms=poll_tiers_ms(shape),
                    janitor_interval=settings.poll.janitor_interval,
                    late_delays=settings.poll.late_delays,
                ),
                notify=relay.notify,
            )
            own_user = unquote(urlsplit(settings.amqp_url.get_secret_value()).username or "guest")
            impersonates = await can_impersonate(connection)
            if not impersonates:
                log.warning(
                    "the worker's broker user has no impersonator tag: commands of apps using "
                    "another broker user are dead-lettered, not retried, after a transient error",
                    user=own_user,
                )
            dispatcher = Dispatcher(
                # Its own channel: a refused republish must not close the outbox's channel.
                Publisher(await connection.channel(publisher_confirms=True, on_return_raises=True)),
                own_user=None if impersonates else own_user,
                worker_user=own_user,
                retry_delays=settings.command_retry_delays,
                max_attempts=settings.max_command_attempts,
                delay_tiers_ms={
                    "commands": sorted(set(shape.command_delays_ms)),
                    "poll": poll_tiers_ms(shape),
                },
            )
            # The HTTP server first: a port already taken stops the worker before it consumes.
            server = await self._start_server(connection, publisher, engine)
            relay_stop = asyncio.Event()
            relay_task = asyncio.create_task(relay.run(relay_stop), name="outbox-relay")
            janitor = Janitor(settings.janitor, engine.plan, relay.notify)
            janitor_task = asyncio.create_task(janitor.run(relay_stop), name="janitor")
            consume: AbstractChannel | None = None
            consumers: list[tuple[AbstractQueue, str]] = []
            try:
                consume = await connection.channel()
                await consume.set_qos(prefetch_count=settings.prefetch)
                handlers: list[tuple[str, Callable[[AbstractIncomingMessage], Awaitable[None]]]]
                handlers = [
                    (
                        topology.COMMANDS_QUEUE,
                        dispatcher.wrap(
                            "commands",
                            functools.partial(handle_command, engine=engine, settings=settings),
                        ),
                    ),
                    (
                        topology.POLL_QUEUE,
                        dispatcher.wrap("poll", functools.partial(handle_poll, engine=engine)),
                    ),
                    # Commit the copy, then ack: operators browse and replay rows.
                    (topology.DEAD_LETTER_QUEUE, dlq.Consumer(own_user, relay_stop)),
                    (
                        topology.RPC_QUEUE,
                        functools.partial(
                            handle_rpc, publisher=publisher, answers=Answers(engine, settings)
                        ),
                    ),
                ]
                for name, handler in handlers:
                    queue = await consume.get_queue(name)
                    consumers.append((queue, await queue.consume(handler)))
                relay.notify()  # rows a previous process left behind
                log.info(
                    "worker ready",
                    providers=settings.providers,
                    prefetch=settings.prefetch,
                    poll_delays=settings.poll.delays,
                    http_port=server.addresses[0][1] if server.addresses else None,
                )
                self.ready.set()
                await stop.wait()
                log.info("stopping: no new messages, finishing in-flight work")
            finally:
                for queue, tag in consumers:
                    try:
                        await queue.cancel(tag)
                    except Exception:  # noqa: BLE001 - the channel may already be gone
                        log.warning("could not cancel a consumer", queue=queue.name)
                if not await dispatcher.wait_idle(settings.shutdown_grace):
                    log.warning("grace period over with work in flight; it will be redelivered")
                await server.cleanup()
                relay_stop.set()
                relay.notify()
                await relay_task
                await janitor_task
                await janitor.release()
                try:
                    await relay.drain()
                except Exception:  # noqa: BLE001
                    log.warning("outbox not fully flushed; the next worker publishes the rest")
                if consume is not None:
                    await consume.close()
        log.info("worker stopped")

    async def _start_server(
        self, connection: AbstractRobustConnection, publisher: Publisher, engine: Engine
    ) -> web.AppRunner:
        """The HTTP server: provider callbacks, /healthz, /readyz."""
        settings = self.settings

        async def readiness() -> tuple[bool, dict[str, Any]]:
            try:
                async with asyncio.timeout(2):
                    await Tortoise.get_connection("default").execute_query("SELECT 1")
                database = True
            except Exception:  # noqa: BLE001 - any failure means not ready
                database = False
            # A robust connection is not "closed" while it reconnects: ask whether it is up.
            broker = connection.connected.is_set()
            circuits = {name: backend.circuit for name, backend in engine.backends.items()}
            return database and broker, {
                "database": database,
                "broker": broker,
                "providers": circuits,
            }

        verifier = None
        pawapay = engine.backends.get("PAWAPAY")
        if settings.pawapay.verify_callbacks and isinstance(pawapay, PawapayClient):
            pinned = settings.pawapay.callback_public_key
            verifier = CallbackVerifier(
                pawapay, pinned_public_key=pinned.get_secret_value() if pinned else None
            )
        metrics = Metrics(
            lambda: {name: backend.circuit for name, backend in engine.backends.items()}
        )
        webhooks = Webhooks(settings, publisher, readiness, verifier, metrics)
        runner = web.AppRunner(webhooks.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        log.info("http server listening", addresses=[list(a) for a in runner.addresses])
        return runner
