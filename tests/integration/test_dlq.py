"""Dead letters end to end: a crash loop dead-letters a command after the delivery limit while
other commands flow, the worker copies it into its table, and `kunpay-worker dlq` lists, shows,
replays (also when killed midway and run again) and purges them."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import pytest

from kunpay_sdk import EventType, topology
from tests.integration.harness import GOOD, Stack, until

pytestmark = pytest.mark.integration

DELIVERY_LIMIT = 3


@pytest.fixture(params=["sqlite", "postgres"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await Stack.create(request.param, tmp_path, KUNPAY_DELIVERY_LIMIT=str(DELIVERY_LIMIT))
    try:
        yield stack
    finally:
        await stack.close()


async def dead_letters_queued(stack: Stack) -> int:
    async with await aio_pika.connect(stack.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
        return queue.declaration_result.message_count or 0


async def crash_loop(stack: Stack, count: int) -> list[uuid.UUID]:
    """``count`` valid collects, each delivered to a consumer that dies before acking (it nacks
    them back) until the broker gives up on them: the delivery limit dead-letters them."""
    async with await aio_pika.connect(stack.amqp_url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=count)
        queue = await channel.get_queue(topology.COMMANDS_QUEUE)

        async def crash(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.nack(requeue=True)

        tag = await queue.consume(crash)
        async with await stack.client() as client:
            ids = [
                (await client.collect(**{**GOOD, "order_id": f"poison-{i}"})).transaction_id
                for i in range(count)
            ]

        async def all_dead() -> bool:
            return await dead_letters_queued(stack) == count

        await until(all_dead, timeout=30)
        await queue.cancel(tag)
    return ids


async def metrics(stack: Stack) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.http_url}/metrics") as resp:
        return await resp.text()


async def rows(stack: Stack) -> list[dict[str, object]]:
    return await stack.db.fetch(
        "SELECT id, reason, routing_key, app, attempts, replayed_at FROM dead_letters ORDER BY id"
    )


async def test_a_crash_loop_is_dead_lettered_and_a_replay_processes_it_once(stack: Stack) -> None:
    (poison,) = await crash_loop(stack, 1)
    worker = await stack.start_worker()

    async def stored() -> bool:
        return len(await rows(stack)) == 1

    await until(stored)
    assert await dead_letters_queued(stack) == 0  # copied, then acked
    assert "kunpay_dead_letters 1.0" in await metrics(stack)
    (row,) = await rows(stack)
    assert (row["reason"], row["routing_key"], row["app"]) == ("delivery_limit", "collect", "guest")
    assert row["attempts"] >= 1

    async with await stack.client() as client:
        # Other commands flow meanwhile.
        other = await client.collect(**{**GOOD, "order_id": "healthy"})
        assert (await client.wait(other.transaction_id, timeout=15)).type is EventType.SUCCEEDED

        listed = await stack.cli("dlq", "list")
        assert "delivery_limit" in listed
        shown = await stack.cli("dlq", "show", str(row["id"]))
        assert "670000000" not in shown  # the payer's number is masked
        assert "******000" in shown
        dry = await stack.cli("dlq", "replay", "--all", "--dry-run")
        assert "would replay 1 of 1" in dry
        assert not await stack.db.fetch("SELECT id FROM transactions WHERE id = $1", str(poison))

        said = await stack.cli("dlq", "replay", "--id", str(row["id"]))
        assert "replayed 1 of 1" in said
        outcome = await client.wait(poison, timeout=15)
    assert outcome.type is EventType.SUCCEEDED
    assert "replayed 0 of 0" in await stack.cli("dlq", "replay", "--all")  # nothing left
    (row,) = await rows(stack)
    assert row["replayed_at"] is not None
    page = await metrics(stack)
    assert "kunpay_dead_letters 0.0" in page
    assert 'kunpay_commands_total{outcome="handled",type="collect"}' in page
    assert "kunpay_outbox_backlog" in page
    reference = (
        await stack.db.fetch(
            "SELECT provider_reference FROM transactions WHERE id = $1", str(poison)
        )
    )[0]["provider_reference"]
    assert stack.mtn.initiations[str(reference)] == 1
    assert not worker.errors()


async def test_a_replay_killed_midway_and_run_again_processes_each_once(stack: Stack) -> None:
    count = 8
    poison = await crash_loop(stack, count)
    await stack.start_worker()

    async def stored() -> bool:
        return len(await rows(stack)) == count

    await until(stored)

    # Killed after its first replay: the rest is left for the next run.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kunpay_worker.cli",
        "dlq",
        "replay",
        "--all",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **stack.env},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while not (await proc.stdout.readline()).startswith(b"replayed "):
            pass
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await stack.cli("dlq", "replay", "--all")

    # The worst moment to die: published, not yet marked. The next run publishes them again.
    ids = [r["id"] for r in await rows(stack)][:3]
    await _unmark(stack, ids)
    again = await stack.cli("dlq", "replay", "--all")
    assert "replayed 3 of 3" in again

    async with await stack.client() as client:
        outcomes = await asyncio.gather(*(client.wait(t, timeout=20) for t in poison))
    assert [o.type for o in outcomes] == [EventType.SUCCEEDED] * count
    transactions = await stack.db.fetch("SELECT provider_reference FROM transactions")
    assert len(transactions) == count
    for tx in transactions:
        assert stack.mtn.initiations[str(tx["provider_reference"])] == 1
    assert all(r["replayed_at"] is not None for r in await rows(stack))


async def _unmark(stack: Stack, ids: list[object]) -> None:
    """Clear replayed_at on these rows (through the database the worker uses)."""
    if stack.db.kind == "postgres":
        conn = await asyncpg.connect(stack.db.url)
        try:
            await conn.execute(
                "UPDATE dead_letters SET replayed_at = NULL WHERE id = ANY($1::bigint[])", ids
            )
        finally:
            await conn.close()
        return
    path = stack.db.url.removeprefix("sqlite://")

    def update() -> None:
        with sqlite3.connect(path) as conn:
            conn.executemany(
                "UPDATE dead_letters SET replayed_at = NULL WHERE id = ?", [(i,) for i in ids]
            )

    await asyncio.to_thread(update)


async def test_purge_needs_yes_and_deletes_what_it_names(stack: Stack) -> None:
    await crash_loop(stack, 2)
    await stack.start_worker()

    async def stored() -> bool:
        return len(await rows(stack)) == 2

    await until(stored)
    with pytest.raises(RuntimeError, match="--yes"):
        await stack.cli("dlq", "purge")
    assert "deleted 0" in await stack.cli("dlq", "purge", "--reason", "malformed", "--yes")
    assert "deleted 2" in await stack.cli("dlq", "purge", "--yes")
    assert await rows(stack) == []
