"""The ceilings of this machine, measured in the same run as kunpay, so results compare across
noisy machines (a figure divided by its ceiling is roughly machine-independent).

- **AMQP publish**: raw aio-pika, persistent messages with publisher confirms, to a scratch
  quorum queue (kunpay's command and poll queues are quorum queues) in the run's vhost: one at a
  time (the confirm round trip) and with ``window`` publishes in flight (the throughput ceiling).
- **AMQP consume**: the same messages consumed with one ack each, ``prefetch`` as the worker's.
- **Database**: raw Tortoise transactions, each an insert of a small row and an update of it,
  on a fresh database of the same kind (the same PostgreSQL cluster, or a SQLite file in the
  same directory), one at a time and ``concurrency`` at once (the worker's prefetch; a
  PostgreSQL pool of the worker's size).

It runs as a process of its own (``python -m benchmarks.ceilings ...`` prints JSON), so the
Tortoise set-up and the CPU it burns are its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
from tortoise import Tortoise
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from benchmarks import stack

BODY_BYTES = 700  # about the size of a collect command


def _message(body: bytes) -> aio_pika.Message:
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
    )


async def amqp_ceiling(url: str, messages: int, window: int, prefetch: int) -> dict[str, Any]:
    body = b"x" * BODY_BYTES
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            f"bench.ceiling.{uuid.uuid4().hex[:8]}",
            durable=True,
            arguments={"x-queue-type": "quorum"},
        )
        try:
            sequential = max(messages // 10, 10)
            started = time.perf_counter()
            for _ in range(sequential):
                await channel.default_exchange.publish(_message(body), queue.name)
            one_at_a_time = time.perf_counter() - started

            slots = asyncio.Semaphore(window)

            async def publish() -> None:
                async with slots:
                    await channel.default_exchange.publish(_message(body), queue.name)

            started = time.perf_counter()
            await asyncio.gather(*(publish() for _ in range(messages)))
            windowed = time.perf_counter() - started

            total = sequential + messages
            consume = await connection.channel()
            await consume.set_qos(prefetch_count=prefetch)
            source = await consume.get_queue(queue.name)
            done = asyncio.Event()
            acked = 0

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal acked
                await message.ack()
                acked += 1
                if acked >= total:
                    done.set()

            started = time.perf_counter()
            tag = await source.consume(on_message)
            await done.wait()
            consumed = time.perf_counter() - started
            await source.cancel(tag)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
    return {
        "queue_type": "quorum",
        "body_bytes": BODY_BYTES,
        "messages": messages,
        "window": window,
        "prefetch": prefetch,
        "publish_confirm_sequential_per_s": round(sequential / one_at_a_time, 1),
        "publish_confirm_round_trip_ms": round(one_at_a_time / sequential * 1000, 3),
        "publish_confirm_per_s": round(messages / windowed, 1),
        "consume_ack_per_s": round(total / consumed, 1),
    }


def _pooled(url: str, pool: int) -> str:
    if url.startswith(("postgres", "asyncpg")) and "maxsize=" not in url:
        return url + ("&" if "?" in url else "?") + f"maxsize={pool}"
    return url


async def db_ceiling(url: str, transactions: int, concurrency: int) -> dict[str, Any]:
    from benchmarks.ceiling_models import CeilingRow

    await Tortoise.init(db_url=_pooled(url, 20), modules={"bench": ["benchmarks.ceiling_models"]})
    try:
        await Tortoise.generate_schemas()

        async def one(i: int) -> None:
            now = datetime.now(UTC)
            async with in_transaction():
                row = await CeilingRow.create(
                    key=f"k{i}", payload='{"transaction_id": "x", "poll_seq": 1}', created_at=now
                )
                await CeilingRow.filter(id=row.id).update(value=F("value") + 1, updated_at=now)

        sequential = max(transactions // 10, 10)
        started = time.perf_counter()
        for i in range(sequential):
            await one(i)
        one_at_a_time = time.perf_counter() - started

        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(transactions):
            queue.put_nowait(i)

        async def runner() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        started = time.perf_counter()
        await asyncio.gather(*(runner() for _ in range(concurrency)))
        concurrent = time.perf_counter() - started
    finally:
        await Tortoise.close_connections()
    return {
        "kind": "postgres" if url.startswith(("postgres", "asyncpg")) else "sqlite",
        "statement": "insert + update of one row in one transaction (Tortoise)",
        "transactions": transactions,
        "concurrency": concurrency,
        "transactions_sequential_per_s": round(sequential / one_at_a_time, 1),
        "transactions_per_s": round(transactions / concurrent, 1),
    }


async def measure(
    *,
    amqp_url: str,
    db_url: str,
    messages: int,
    transactions: int,
    window: int = 64,
    prefetch: int = 32,
    concurrency: int = 32,
) -> dict[str, Any]:
    """Run this module as a process of its own; its JSON."""
    out = await stack.run(
        sys.executable,
        "-m",
        "benchmarks.ceilings",
        "--amqp-url",
        amqp_url,
        "--db-url",
        db_url,
        "--messages",
        str(messages),
        "--transactions",
        str(transactions),
        "--window",
        str(window),
        "--prefetch",
        str(prefetch),
        "--concurrency",
        str(concurrency),
        env={"PYTHONPATH": str(stack.ROOT)},
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "amqp": await amqp_ceiling(args.amqp_url, args.messages, args.window, args.prefetch),
        "db": await db_ceiling(args.db_url, args.transactions, args.concurrency),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args))))


if __name__ == "__main__":
    main()
