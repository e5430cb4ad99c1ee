"""Callbacks, polling and the janitor end to end: real worker processes with their HTTP server,
the sandbox's callbacks (MTN PUT, PawaPay signed, Flutterwave with its secret hash, Orange
notifications), the broker and both databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web

from kunpay_sdk import EventType, KunPayClient, Status, topology
from kunpay_worker.sandbox import SandboxConfig, build_app
from kunpay_worker.sandbox.common import Outcome
from tests.integration.harness import (
    EventLog,
    Stack,
    create_vhost,
    delete_vhost,
    run,
    until,
)

pytestmark = pytest.mark.integration

# The first poll comes 30 s after sending: whatever settles sooner settled through a callback.
# DEBUG: a poll's "checking" line shows up, so a test can tell no poll ran.
SLOW_POLLS = {"KUNPAY_POLL__DELAYS": "[30]", "KUNPAY_LOG_LEVEL": "DEBUG"}
MTN_CALLBACK = "/payments/momo/collection/webhook/"
StackFactory = Callable[..., Awaitable[Stack]]
BACKENDS = {
    "MTN_CAMEROON": "MTN_MOMO",
    "PAWAPAY": "PAWAPAY",
    "FLUTTERWAVE": "FLUTTERWAVE",
    "ORANGE_CAMEROON": "ORANGE_MP",
}


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_stack(kind: str, tmp_path: Path) -> AsyncIterator[StackFactory]:
    stacks: list[Stack] = []

    async def make(*, settle_seconds: float = 0.2, **worker_env: str) -> Stack:
        stack = await Stack.create(kind, tmp_path, settle_seconds=settle_seconds, **worker_env)
        stacks.append(stack)
        await stack.start_worker()
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            await stack.close()


async def collect(client: KunPayClient, provider: str, number: str) -> uuid.UUID:
    accepted = await client.collect(
        provider=provider,
        amount=Decimal("5000"),
        currency="XAF",
        phone_number=number,
        order_id=f"order-{uuid.uuid4().hex[:8]}",
        user_id="u-1",
    )
    return accepted.transaction_id


def about(tx_id: uuid.UUID, event: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("event") == event and r.get("transaction_id") == str(tx_id)


async def forge(stack: Stack, reference: str, tx_id: uuid.UUID) -> dict[str, Any]:
    """What anyone on the internet can send: an unsigned MTN callback claiming success."""
    body = {"referenceId": reference, "externalId": str(tx_id), "status": "SUCCESSFUL"}
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{stack.http_url}{MTN_CALLBACK}?reference={reference}", json=body) as resp,
    ):
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def _sent(stack: Stack, tx_id: uuid.UUID) -> bool:
    rows = await stack.db.fetch("SELECT initiation FROM transactions WHERE id = $1", str(tx_id))
    return bool(rows) and rows[0]["initiation"] == "SENT"


async def reference_of(stack: Stack, tx_id: uuid.UUID) -> str:
    rows = await stack.db.fetch(
        "SELECT provider_reference FROM transactions WHERE id = $1", str(tx_id)
    )
    return str(rows[0]["provider_reference"])


async def poll_seq_of(stack: Stack, tx_id: uuid.UUID) -> int:
    rows = await stack.db.fetch("SELECT poll_seq FROM transactions WHERE id = $1", str(tx_id))
    return int(rows[0]["poll_seq"])


async def send_poll(stack: Stack, body: dict[str, Any]) -> None:
    connection = await aio_pika.connect(stack.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), content_type="application/json"),
            routing_key=topology.POLL_QUEUE,
        )


# -- callbacks -------------------------------------------------------------------------------


async def test_callbacks_settle_payments_long_before_the_first_poll(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(**SLOW_POLLS)
    worker = stack.workers[-1]
    async with await stack.client() as client:
        ids = {
            provider: await collect(client, provider, number)
            for provider, number in [
                ("MTN_CAMEROON", "670000000"),
                ("PAWAPAY", "690000000"),
                ("FLUTTERWAVE", "670000000"),
                ("ORANGE_CAMEROON", "690000000"),
            ]
        }
        outcomes = await asyncio.gather(*(client.wait(i, timeout=15) for i in ids.values()))
    assert [o.type for o in outcomes] == [EventType.SUCCEEDED] * 4
    for provider, tx_id in ids.items():
        queued = await worker.wait_log(about(tx_id, "callback: check queued"))
        assert queued["backend"] == BACKENDS[provider]
    assert not [r for r in worker.lines if r.get("event") == "checking"]  # no poll ran
    assert not worker.errors()


async def test_a_flood_of_forged_success_callbacks_changes_nothing_and_costs_one_lookup(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(**SLOW_POLLS, KUNPAY_SERVER__COALESCE_WINDOW="60")
    worker = stack.workers[-1]
    async with await stack.client() as client:
        events = await EventLog(client).start()
        try:
            tx_id = await collect(client, "MTN_CAMEROON", "670000010")  # MTN keeps it PENDING
            await until(lambda: _sent(stack, tx_id))  # MTN has the request
            reference = await reference_of(stack, tx_id)
            before = stack.mtn.lookups[reference]

            answers = await asyncio.gather(*(forge(stack, reference, tx_id) for _ in range(25)))

            assert sorted(a["check"] for a in answers) == ["coalesced"] * 24 + ["queued"]
            checked = await worker.wait_log(about(tx_id, "checked on a callback"))
            assert checked["status"] == "PENDING"
            assert stack.mtn.lookups[reference] - before == 1
            assert (await client.get(tx_id)).status is Status.PENDING
            assert [e.type for e in events.of(tx_id)] == [EventType.INITIATED]
        finally:
            await events.close()


async def test_a_callback_that_beats_the_send_is_checked_once_the_send_is_recorded(
    make_stack: StackFactory,
) -> None:
    # MTN registers the request and calls back at once, but its 202 is held: the callback
    # arrives while the send is still in flight (the test sends it; no public URL).
    stack = await make_stack(**SLOW_POLLS, KUNPAY_PUBLIC_BASE_URL="")
    worker = stack.workers[-1]
    async with await stack.client() as client:
        tx_id = await collect(client, "MTN_CAMEROON", "670000030")

        async def held() -> bool:
            return stack.mtn.held == 1

        await until(held)
        reference = await reference_of(stack, tx_id)
        await forge(stack, reference, tx_id)
        await worker.wait_log(
            about(tx_id, "callback before the send was recorded; checking again shortly")
        )
        outcome = await client.wait(tx_id, timeout=15)  # the first poll is 30 s away
    assert outcome.type is EventType.SUCCEEDED
    checked = await worker.wait_log(
        lambda r: about(tx_id, "checked on a callback")(r) and r.get("status") == "COMPLETED"
    )
    assert checked
    assert stack.mtn.initiations[reference] == 1
    assert not [r for r in worker.lines if r.get("event") == "checking"]


async def test_a_payment_whose_callback_was_missed_is_completed_by_polling(
    make_stack: StackFactory,
) -> None:
    # The callback URL points at a port nobody listens on: MTN's callback is lost.
    with closed_port() as port:
        stack = await make_stack(KUNPAY_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
        worker = stack.workers[-1]
        async with await stack.client() as client:
            tx_id = await collect(client, "MTN_CAMEROON", "670000000")
            outcome = await client.wait(tx_id, timeout=15)
    assert outcome.type is EventType.SUCCEEDED
    payment = stack.mtn.payments[await reference_of(stack, tx_id)]
    assert payment.callback_url is not None
    assert payment.callback_url.endswith(f"{MTN_CALLBACK}?reference={payment.reference}")
    assert not [r for r in worker.lines if about(tx_id, "callback: check queued")(r)]


async def test_concurrent_polls_callbacks_and_verifies_make_one_transition(
    make_stack: StackFactory,
) -> None:
    # No callback from the sandbox (no public URL): the test sends them, all at once.
    stack = await make_stack(
        **SLOW_POLLS, KUNPAY_PUBLIC_BASE_URL="", KUNPAY_SERVER__COALESCE_WINDOW="0"
    )
    async with await stack.client() as client:
        events = await EventLog(client).start()
        try:
            tx_id = await collect(client, "MTN_CAMEROON", "670000000")
            await until(lambda: _sent(stack, tx_id))  # MTN has the request
            reference = await reference_of(stack, tx_id)

            async def settled() -> bool:
                payment = stack.mtn.payments[reference]
                return stack.mtn.outcome(payment)[0] is Outcome.SUCCESSFUL

            await until(settled)
            seq = await poll_seq_of(stack, tx_id)
            await asyncio.gather(
                *(client.verify(tx_id) for _ in range(4)),
                *(forge(stack, reference, tx_id) for _ in range(4)),
                *(
                    send_poll(stack, {"transaction_id": str(tx_id), "poll_seq": seq})
                    for _ in range(2)
                ),
                *(
                    send_poll(stack, {"transaction_id": str(tx_id), "check": "now"})
                    for _ in range(2)
                ),
            )
            await events.final(tx_id)
            # Everything still in flight lands before the assertions.
            await until(lambda: _quiet(stack, tx_id))
        finally:
            await events.close()
    mine = events.of(tx_id)
    assert [e.type for e in mine] == [EventType.INITIATED, EventType.SUCCEEDED]
    assert [e.sequence for e in mine] == sorted({e.sequence for e in mine})
    rows = await stack.db.fetch(
        "SELECT status FROM transaction_statuses WHERE transaction_id = $1 ORDER BY id",
        str(tx_id),
    )
    assert [r["status"] for r in rows] == ["PENDING", "COMPLETED"]
    assert not stack.workers[-1].errors()


async def _quiet(stack: Stack, tx_id: uuid.UUID) -> bool:
    """Nothing left to publish for the transaction and nothing waiting in the work queues."""
    rows = await stack.db.fetch(
        "SELECT count(*) AS n FROM outbox WHERE transaction_id = $1", str(tx_id)
    )
    return int(rows[0]["n"]) == 0 and await _queued(stack, topology.POLL_QUEUE) == 0


async def _queued(stack: Stack, name: str) -> int:
    out = await run(
        "rabbitmqctl", "list_queues", "-p", stack.vhost, "-q", "--no-table-headers",
        "name", "messages_ready", "messages_unacknowledged",
    )  # fmt: skip
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[1]) + int(parts[2])
    return 0


# -- polling and the janitor -----------------------------------------------------------------


async def test_a_one_hour_delay_does_not_hold_back_a_half_second_one() -> None:
    vhost, url = await create_vhost()
    try:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await topology.declare(channel, topology.Topology(poll_delays_ms=(500, 3_600_000)))
            for body, ms in ((b"an hour", 3_600_000), (b"half a second", 500)):
                await channel.default_exchange.publish(
                    aio_pika.Message(body), routing_key=topology.delay_queue("poll", ms)
                )
            poll = await channel.get_queue(topology.POLL_QUEUE)
            got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

            async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    if not got.done():
                        got.set_result(message.body)

            await poll.consume(take)
            assert await asyncio.wait_for(got, timeout=10) == b"half a second"
            hour = await channel.declare_queue(
                topology.delay_queue("poll", 3_600_000), passive=True
            )
            assert hour.declaration_result.message_count == 1
    finally:
        await delete_vhost(vhost)


async def test_a_redelivered_poll_does_not_fork_the_chain(make_stack: StackFactory) -> None:
    """A worker that published the next poll but crashed before acking this one gets this one
    again: its poll_seq is behind the row's, so it is dropped."""
    stack = await make_stack(
        KUNPAY_LOG_LEVEL="DEBUG", KUNPAY_POLL__DELAYS="[0.2, 0.4, 0.8, 1.6, 3.2, 6.4]"
    )
    worker = stack.workers[-1]
    async with await stack.client() as client:
        tx_id = await collect(client, "MTN_CAMEROON", "670000010")  # stays PENDING: polled on
    first = await worker.wait_log(about(tx_id, "check recorded"))
    seq = int(first["poll_seq"])
    await until(lambda: _seq_after(stack, tx_id, seq))

    await send_poll(stack, {"transaction_id": str(tx_id), "poll_seq": seq})

    dropped = await worker.wait_log(
        lambda r: about(tx_id, "stale poll dropped")(r) and r.get("poll_seq") == seq
    )
    assert dropped
    checks = [r["poll_seq"] for r in worker.lines if about(tx_id, "checking")(r)]
    assert len(checks) == len(set(checks)), f"a poll_seq was checked twice: {checks}"
    # The chain goes on from where it was, one link at a time.
    later = await poll_seq_of(stack, tx_id)
    await worker.wait_log(
        lambda r: about(tx_id, "check recorded")(r) and r.get("poll_seq") == later
    )
    checks = [r["poll_seq"] for r in worker.lines if about(tx_id, "checking")(r)]
    assert len(checks) == len(set(checks)), f"a poll_seq was checked twice: {checks}"


async def _seq_after(stack: Stack, tx_id: uuid.UUID, seq: int) -> bool:
    return await poll_seq_of(stack, tx_id) > seq


async def test_the_janitor_resumes_polling_after_the_delay_queues_are_purged(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(KUNPAY_POLL__DELAYS="[8]", KUNPAY_PUBLIC_BASE_URL="")
    async with await stack.client() as client:
        events = await EventLog(client).start()
        try:
            tx_id = await collect(client, "MTN_CAMEROON", "670000000")
            await until(lambda: _sent(stack, tx_id))  # MTN has the request
            await until(lambda: _published(stack, tx_id))
            await stack.workers[-1].kill()
            lost = await _purge_polls(stack)
            assert lost >= 1  # the only scheduled check is gone

            worker = await stack.start_worker(KUNPAY_POLL__DELAYS="[8]", KUNPAY_PUBLIC_BASE_URL="")
            await worker.wait_log(about(tx_id, "janitor rescheduled a check"), timeout=30)
            final = await events.final(tx_id, timeout=20)
        finally:
            await events.close()
    assert final.type is EventType.SUCCEEDED


async def _published(stack: Stack, tx_id: uuid.UUID) -> bool:
    rows = await stack.db.fetch(
        "SELECT count(*) AS n FROM outbox WHERE transaction_id = $1", str(tx_id)
    )
    return int(rows[0]["n"]) == 0


async def _purge_polls(stack: Stack) -> int:
    """Purge every poll delay queue and the poll queue; how many messages were dropped."""
    names = await run("rabbitmqctl", "list_queues", "-p", stack.vhost, "-q", "--no-table-headers")
    lost = 0
    connection = await aio_pika.connect(stack.amqp_url)
    async with connection:
        channel = await connection.channel()
        for line in names.splitlines():
            name = line.split()[0] if line.split() else ""
            if name == topology.POLL_QUEUE or name.startswith("kunpay.delay.poll."):
                queue = await channel.declare_queue(name, passive=True)
                purged = await queue.purge()
                lost += purged.message_count or 0
    return lost


async def test_a_payment_pending_too_long_goes_stale_and_is_resolved_by_hand(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        KUNPAY_POLL__DELAYS="[0.3]",
        KUNPAY_POLL__JANITOR_INTERVAL="0.3",
        KUNPAY_JANITOR__MAX_AGE="6",
    )
    worker = stack.workers[-1]
    async with await stack.client() as client:
        events = await EventLog(client).start()
        try:
            tx_id = await collect(client, "MTN_CAMEROON", "670000010")  # MTN never settles it
            await worker.wait_log(about(tx_id, "janitor rescheduled a check"))
            await worker.wait_log(about(tx_id, "gave up checking a PENDING payment: stale"))

            assert "kunpay_stale_transactions 1.0" in await _metrics(stack)
            listed = await _operator(stack, "pending", "--stale")
            assert str(tx_id) in listed
            assert "stale" in listed

            said = await _operator(
                stack,
                "resolve",
                str(tx_id),
                "--status",
                "failed",
                "--reason",
                "MTN support: never debited",
                "--by",
                "alice",
            )
            assert "operator:alice" in said
            final = await events.final(tx_id)
            assert "kunpay_stale_transactions 0.0" in await _metrics(stack)
            with pytest.raises(RuntimeError, match="cannot resolve"):
                await _operator(
                    stack, "resolve", str(tx_id), "--status", "completed", "--reason", "x"
                )
        finally:
            await events.close()
    assert final.type is EventType.FAILED
    assert final.transaction is not None
    assert final.transaction.status is Status.FAILED
    rows = await stack.db.fetch(
        "SELECT status, reason, actor FROM transaction_statuses WHERE transaction_id = $1 "
        "ORDER BY id",
        str(tx_id),
    )
    assert rows[-1] == {
        "status": "FAILED",
        "reason": "RESOLVED: MTN support: never debited",
        "actor": "operator:alice",
    }
    assert str(tx_id) not in await _operator(stack, "pending")


async def _operator(stack: Stack, *args: str) -> str:
    return await run(
        sys.executable, "-m", "kunpay_worker.cli", *args, env={**stack.env, "COLUMNS": "250"}
    )


# -- back-pressure ---------------------------------------------------------------------------


async def test_a_failing_backend_opens_its_circuit_and_is_probed_again_later(
    make_stack: StackFactory,
) -> None:
    # Orange Money is down until the test brings it up: its port is bound, never listening.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        stack = await make_stack(
            KUNPAY_ORANGE_MP__BASE_URL=f"http://127.0.0.1:{port}",
            KUNPAY_HTTP__BREAKER_FAILURES="2",
            KUNPAY_HTTP__BREAKER_COOLDOWN="2",
        )
        worker = stack.workers[-1]
        async with await stack.client() as client:
            tx_id = await collect(client, "ORANGE_CAMEROON", "690000000")
            await worker.wait_log(
                lambda r: (
                    r.get("event") == "provider not reached; will send again"
                    and "circuit open" in str(r.get("error"))
                )
            )
            ready, details = await _readyz(stack)
            assert ready == 200  # a provider outage is not the worker's: it stays in service
            assert details["providers"]["ORANGE_MP"] == "open"
            assert details["providers"]["MTN_MOMO"] == "closed"
            metric = 'kunpay_provider_circuit_state{backend="ORANGE_MP",state="open"} 1.0'
            assert metric in await _metrics(stack)
            assert (await client.get(tx_id)).status is Status.PENDING  # nothing failed

            orange = web.AppRunner(build_app(SandboxConfig(settle_seconds=0.2)), access_log=None)
            await orange.setup()
            blocker.close()  # Orange Money comes back, on its port
            try:
                await web.TCPSite(orange, "127.0.0.1", port).start()
                outcome = await client.wait(tx_id, timeout=20)
                _, details = await _readyz(stack)
            finally:
                await orange.cleanup()
    assert outcome.type is EventType.SUCCEEDED
    assert details["providers"]["ORANGE_MP"] == "closed"


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port that refuses connections for as long as the block lasts: bound, never listening,
    so no server of the test can be given it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def _metrics(stack: Stack) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.http_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def _readyz(stack: Stack) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.http_url}/readyz") as resp:
        return resp.status, await resp.json()
