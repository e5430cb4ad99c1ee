"""End-to-end benchmark (issue 7): M payments through the public SDK, timed to their final event.

::

    .venv/bin/python -m benchmarks.e2e --payments 2000 --db sqlite --workers 1
    .venv/bin/python benchmarks/e2e.py --payments 2000 --rate 50 --provider-latency 1.0

A run makes its own RabbitMQ vhost (``rabbitmqctl``, deleted at the end) and its own database
(a SQLite file in a temporary directory, or a fresh database on the PostgreSQL cluster of
``--postgres-url``), starts the provider sandbox (``kunpay-worker sandbox``, settling payments
after ``--settle`` seconds and delaying every API answer by ``--provider-latency``) and
``--workers`` ``kunpay-worker run`` processes, each with its own HTTP port.

First it measures the machine's ceilings (``benchmarks/ceilings.py``: raw aio-pika publish with
confirms and consume with acks, raw Tortoise transactions on a database of the same kind). Then
one ``KunPayClient`` subscribes with ``client.events(queue=...)`` and issues the payments:
``--rate`` per second on a fixed schedule (open loop: a slow system does not slow the offered
load), or with ``--rate 0`` as fast as the system goes with ``--concurrency`` payments in
flight (closed loop: each caller issues its next payment once the last one's final event
arrived, so no backlog builds up in front of the worker).
``--mix`` splits them into collections, payouts and refunds (a refund is issued once the
collection it refunds succeeded). Each payment has a known idempotency key, so its transaction
id is known before it is sent. Timestamps are the benchmark's monotonic clock when
``collect()`` is called, when it returns, and when the subscriber receives
``payment.initiated`` and the final event (``payment.succeeded``; ``payment.refunded`` for
refunds).

Figures:

- **Throughput in steady state**: completions sorted by time; the first and last 10 % are
  discarded (warm-up and drain) and the rate is measured between the 10 % and the 90 %
  completion. Also the overall rate (first call to last completion).
- **Latency** p50/p95/p99 of ``collect()`` return, ``payment.initiated`` and the final event,
  each from the call, over the payments issued between the 10 % and the 90 % issue (the same
  trimming). The final event also net of the sandbox's latency times the provider calls on the
  path (2 for a collection: request, status; 4 for a payout: account holder, balance,
  transfer, status; 2 for a refund).
- **CPU** (utime + stime from ``/proc/PID/stat``) of each worker, the sandbox and this
  benchmark process, sampled every 0.25 s: per completed payment over the whole run and over the
  steady window; RabbitMQ's and PostgreSQL's servers over the whole run; the machine's busy
  share in the window. **Peak RSS** (``VmHWM``) of each process.
- **Ratios** of kunpay's steady throughput to each ceiling, and the issue's targets with the
  figure measured, whether it applies to this run's settings, and whether it is met.

The sandbox is also asked how many times each provider reference was initiated: more than once
would be a double charge. Results go to ``--json`` (default
``benchmarks/results/e2e-<UTC time>.json``; the folder is git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/e2e.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from rich.table import Table

from benchmarks import ceilings, profiles, stack
from kunpay_sdk import Event, KunPayClient, KunPayError
from kunpay_sdk.contracts import EventType, transaction_id_for

console = stack.console
step = stack.step


KINDS = ("collections", "payouts", "refunds")
OPERATION = {"collections": "collect", "payouts": "disburse", "refunds": "refund"}
EXPECTED_FINAL = {
    "collections": EventType.SUCCEEDED,
    "payouts": EventType.SUCCEEDED,
    "refunds": EventType.REFUNDED,
}
# Provider calls on the path from collect() to the final event (tokens are cached for an hour).
PROVIDER_CALLS = {"collections": 2, "payouts": 4, "refunds": 2}
AMOUNT = Decimal("5000")
PHONE = "670000000"  # the sandbox's "succeeds" number
TRIM = 0.10  # share of completions (and of issues) left out at each end


@dataclass
class Op:
    index: int
    kind: str
    key: str
    tx_id: uuid.UUID
    target: int | None = None  # refunds: the index of the collection refunded
    t_call: float | None = None
    t_return: float | None = None
    t_initiated: float | None = None
    t_final: float | None = None
    final_type: str | None = None
    error: str | None = None


class Tracker:
    """Every op by transaction id; what the subscriber saw of each, and when."""

    def __init__(self, ops: Sequence[Op]) -> None:
        self.ops = list(ops)
        self.by_tx = {op.tx_id: op for op in ops}
        self.settled = 0
        self.progress = asyncio.Event()
        self.done = asyncio.Event()
        self._finals: dict[uuid.UUID, asyncio.Future[bool]] = {}
        self.foreign = 0

    def final_of(self, tx_id: uuid.UUID) -> asyncio.Future[bool]:
        """Resolves to True when ``tx_id`` succeeded, False when it ended otherwise."""
        if tx_id not in self._finals:
            self._finals[tx_id] = asyncio.get_running_loop().create_future()
        return self._finals[tx_id]

    def on_event(self, event: Event, at: float) -> None:
        op = self.by_tx.get(event.transaction.id) if event.transaction else None
        if op is None:
            self.foreign += 1  # e.g. the original of a refund becoming REFUNDED: not an op
            return
        if event.type is EventType.INITIATED:
            if op.t_initiated is None:
                op.t_initiated = at
        elif event.is_final and op.t_final is None:
            op.t_final = at
            op.final_type = str(event.type)
            future = self.final_of(op.tx_id)
            if not future.done():
                future.set_result(event.type is EXPECTED_FINAL[op.kind])
            self._settle()

    def issue_failed(self, op: Op, error: str) -> None:
        op.error = error
        future = self.final_of(op.tx_id)
        if not future.done():
            future.set_result(False)
        self._settle()

    def _settle(self) -> None:
        self.settled += 1
        self.progress.set()
        if self.settled >= len(self.ops):
            self.done.set()


def parse_mix(text: str) -> dict[str, float]:
    """``collections=0.8,payouts=0.1,refunds=0.1`` (or ``0.8,0.1,0.1``) → shares summing to 1."""
    shares: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for i, part in enumerate(parts):
        name, sep, value = part.partition("=")
        if not sep:
            name, value = KINDS[i] if i < len(KINDS) else "?", part
        if name not in shares:
            raise SystemExit(f"--mix: unknown kind {name!r}; use {', '.join(KINDS)}")
        shares[name] = float(value)
    total = sum(shares.values())
    if total <= 0 or any(v < 0 for v in shares.values()):
        raise SystemExit("--mix: shares must be >= 0 and not all 0")
    shares = {k: v / total for k, v in shares.items()}
    if shares["refunds"] > shares["collections"]:
        raise SystemExit("--mix: every refund needs a collection to refund")
    return shares


def plan_ops(total: int, mix: dict[str, float], app: str, run_id: str) -> list[Op]:
    """``total`` ops interleaved smoothly by ``mix``; refund j refunds collection j."""
    counts = {k: math.floor(mix[k] * total) for k in KINDS}
    counts["collections"] += total - sum(counts.values())
    given = dict.fromkeys(KINDS, 0)
    collections: list[int] = []
    ops: list[Op] = []
    for index in range(total):
        # The kind furthest behind its share so far (refunds only once a collection exists).
        candidates = [
            k
            for k in KINDS
            if given[k] < counts[k] and (k != "refunds" or given["refunds"] < len(collections))
        ]
        kind = min(candidates, key=lambda k: (given[k] + 1) / counts[k])
        key = f"bench-{run_id}-{index}"
        op = Op(index, kind, key, transaction_id_for(app, OPERATION[kind], key))
        if kind == "refunds":
            op.target = collections[given["refunds"]]
        elif kind == "collections":
            collections.append(index)
        given[kind] += 1
        ops.append(op)
    return ops


async def issue(client: KunPayClient, op: Op, ops: Sequence[Op], tracker: Tracker) -> None:
    if op.target is not None and not await tracker.final_of(ops[op.target].tx_id):
        tracker.issue_failed(op, "the collection to refund did not succeed")
        return
    op.t_call = time.perf_counter()
    try:
        if op.kind == "refunds":
            await client.refund(ops[op.target or 0].tx_id, idempotency_key=op.key)
        else:
            call = client.collect if op.kind == "collections" else client.disburse
            await call(
                provider="MTN_CAMEROON",
                amount=AMOUNT,
                currency="XAF",
                phone_number=PHONE,
                order_id=f"order-{op.index}",
                user_id="bench",
                idempotency_key=op.key,
            )
    except KunPayError as exc:
        op.t_return = time.perf_counter()
        tracker.issue_failed(op, repr(exc))
        return
    op.t_return = time.perf_counter()


async def drive(
    client: KunPayClient, ops: Sequence[Op], tracker: Tracker, rate: float, concurrency: int
) -> None:
    """Issue every op: on a fixed schedule at ``rate``/s (open loop), or (rate 0) by
    ``concurrency`` callers that each issue the next payment once their last one settled."""
    tasks: list[asyncio.Task[None]] = []
    if rate > 0:
        start = time.perf_counter()
        for i, op in enumerate(ops):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(issue(client, op, ops, tracker)))
        await asyncio.gather(*tasks)
        return
    pending = list(reversed(ops))

    async def caller() -> None:
        # Closed loop: the next payment once this one's final event arrived, so the system
        # runs at its own pace with ``concurrency`` payments in flight, not behind a backlog.
        while pending:
            op = pending.pop()
            await issue(client, op, ops, tracker)
            await tracker.final_of(op.tx_id)

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def listen(client: KunPayClient, queue: str, tracker: Tracker, ready: asyncio.Event) -> None:
    subscription = client.events(queue=queue, prefetch=512)
    await subscription.start()
    ready.set()
    try:
        async for event in subscription:
            tracker.on_event(event, time.perf_counter())
            async with event.process():
                pass
    finally:
        await subscription.close()


async def wait_settled(tracker: Tracker, stall: float) -> bool:
    """Until every op settled, or nothing settled for ``stall`` seconds; all settled?"""
    while not tracker.done.is_set():
        tracker.progress.clear()
        try:
            async with asyncio.timeout(stall):
                await tracker.progress.wait()
        except TimeoutError:
            return False
    return True


async def sandbox_counts(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(f"{url}/_sandbox/requests") as resp,
    ):
        counts: dict[str, Any] = await resp.json()
    initiations = [n for sim in counts.values() for n in sim["initiations"].values()]
    lookups = sum(n for sim in counts.values() for n in sim["lookups"].values())
    return {
        "references_initiated": len(initiations),
        "double_initiations": sum(1 for n in initiations if n > 1),
        "status_lookups": lookups,
    }


# -- figures ------------------------------------------------------------------------------------


def _ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    return stack.percentiles([s * 1000 for s in seconds])


def steady_window(times: Sequence[float]) -> tuple[float, float, int] | None:
    """(start, end, completions between) of the middle 80 % of ``times``."""
    ordered = sorted(times)
    n = len(ordered)
    if n < 3:
        return None
    lo = int(n * TRIM)
    hi = max(lo + 1, math.ceil(n * (1 - TRIM)) - 1)
    if ordered[hi] <= ordered[lo]:
        return None
    return ordered[lo], ordered[hi], hi - lo


def latencies(ops: Sequence[Op], provider_latency: float) -> dict[str, Any]:
    """Per kind: latency percentiles (ms) of the ops issued in the middle 80 %."""
    result: dict[str, Any] = {}
    for kind in KINDS:
        issued = sorted(
            (op for op in ops if op.kind == kind and op.t_call is not None),
            key=lambda op: op.t_call or 0.0,
        )
        if not issued:
            continue
        n = len(issued)
        lo, hi = int(n * TRIM), max(int(n * TRIM) + 1, math.ceil(n * (1 - TRIM)))
        sample = issued[lo:hi]
        returned = [op.t_return - op.t_call for op in sample if op.t_return and op.t_call]
        initiated = [op.t_initiated - op.t_call for op in sample if op.t_initiated and op.t_call]
        final = [
            op.t_final - op.t_call
            for op in sample
            if op.t_final and op.t_call and op.final_type == str(EXPECTED_FINAL[kind])
        ]
        net = PROVIDER_CALLS[kind] * provider_latency
        result[kind] = {
            "sample": f"ops issued between the {TRIM:.0%} and the {1 - TRIM:.0%} issue",
            "call_return": _ms(returned),
            "initiated": _ms(initiated),
            "final": _ms(final),
            "provider_calls_on_path": PROVIDER_CALLS[kind],
            "final_net_of_provider_latency": _ms([f - net for f in final]),
        }
    return result


def _ratio(value: float | None, ceiling: float | None) -> float | None:
    if value is None or not ceiling:
        return None
    return round(value / ceiling, 4)


def targets(
    args: argparse.Namespace, result: dict[str, Any], ceiling: dict[str, Any]
) -> list[dict[str, Any]]:
    """The issue's targets, each with the figure measured here and whether it applies."""
    only_collections = args.mix_shares["collections"] == 1.0
    steady = result["throughput"]["steady_per_s"]
    cpu = result["cpu"]["worker_ms_per_payment_steady"]
    p99 = (result["latency_ms"].get("collections") or {}).get("call_return", {}).get("p99")
    publish = (ceiling.get("amqp") or {}).get("publish_confirm_per_s")
    consume = (ceiling.get("amqp") or {}).get("consume_ack_per_s")
    database = (ceiling.get("db") or {}).get("transactions_per_s")
    round_trip = (ceiling.get("amqp") or {}).get("publish_confirm_round_trip_ms")
    db_sequential = (ceiling.get("db") or {}).get("transactions_sequential_per_s")

    def throughput(name: str, goal: float, applies: bool, when: str) -> dict[str, Any]:
        return {
            "target": name,
            "goal": goal,
            "unit": "completed/s",
            "measured": steady,
            "applies": applies,
            "applies_when": when,
            "met": (steady >= goal) if applies and steady is not None else None,
            "goal_vs_ceilings": {
                "amqp_publish": _ratio(goal, publish),
                "amqp_consume": _ratio(goal, consume),
                "db_transactions": _ratio(goal, database),
            },
            "measured_vs_ceilings": {
                "amqp_publish": _ratio(steady, publish),
                "amqp_consume": _ratio(steady, consume),
                "db_transactions": _ratio(steady, database),
            },
        }

    return [
        throughput(
            "collections/s, provider latency 0",
            150,
            only_collections and args.provider_latency == 0 and args.rate == 0,
            "collections only, --provider-latency 0, --rate 0",
        ),
        throughput(
            "collections/s, provider latency 1 s",
            100,
            only_collections and args.provider_latency >= 1.0 and args.rate == 0,
            "collections only, --provider-latency 1, --rate 0",
        ),
        {
            "target": "p99 collect() return at 50/s offered, provider latency 1 s",
            "goal": 50,
            "unit": "ms",
            "measured": p99,
            "applies": args.rate == 50 and args.provider_latency >= 1.0,
            "applies_when": "--rate 50 --provider-latency 1",
            "met": (p99 <= 50) if p99 is not None and args.rate == 50 else None,
            "goal_vs_ceilings": {"publish_round_trips": _ratio(50, round_trip)},
            "measured_vs_ceilings": {"publish_round_trips": _ratio(p99, round_trip)},
        },
        {
            "target": "worker CPU per completed collection",
            "goal": 6,
            "unit": "ms",
            "measured": cpu,
            "applies": only_collections,
            "applies_when": "collections only",
            "met": (cpu <= 6) if only_collections and cpu is not None else None,
            # In units of this machine's speed: raw DB transactions (one at a time) and AMQP
            # publish round trips that fit in the same time.
            "goal_vs_ceilings": {
                "raw_db_transactions": _ratio(6 * (db_sequential or 0), 1000),
                "publish_round_trips": _ratio(6, round_trip),
            },
            "measured_vs_ceilings": {
                "raw_db_transactions": _ratio((cpu or 0) * (db_sequential or 0), 1000)
                if cpu is not None
                else None,
                "publish_round_trips": _ratio(cpu, round_trip),
            },
        },
    ]


# -- the run ------------------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    directory = Path(tempfile.mkdtemp(prefix="kunpay-bench-"))
    cleanup: list[Any] = []
    procs: list[stack.Proc] = []
    result: dict[str, Any] = {}
    try:
        vhost = await stack.Vhost.create(args.amqp_url, "kunpay-bench")
        cleanup.append(vhost.delete)
        database = await stack.Database.create(args.db, directory, args.postgres_url, "kunpay")
        cleanup.append(database.drop)
        scratch = await stack.Database.create(args.db, directory, args.postgres_url, "ceiling")
        cleanup.append(scratch.drop)

        step("starting the sandbox")
        sandbox, sandbox_url = await stack.start_sandbox(
            directory, latency=args.provider_latency, settle=args.settle
        )
        procs.append(sandbox)
        env = stack.worker_env(
            amqp_url=vhost.url,
            database_url=database.url,
            sandbox_url=sandbox_url,
            poll_delays=args.poll_delays,
            provider_latency=args.provider_latency,
            overrides=args.overrides,
        )
        step("migrating")
        await stack.migrate(env)

        ceiling: dict[str, Any] = {}
        if args.ceiling_messages > 0:
            step("measuring the ceilings")
            ceiling = await ceilings.measure(
                amqp_url=vhost.url,
                db_url=scratch.url,
                messages=args.ceiling_messages,
                transactions=args.ceiling_transactions,
            )
        await scratch.drop()

        step(f"starting {args.workers} worker(s)")
        workers = [
            await stack.start_worker(directory, i, env, callbacks=args.callbacks)
            for i in range(args.workers)
        ]
        procs += workers

        client = await KunPayClient.connect(vhost.url, publish_timeout=30, request_timeout=30)
        cleanup.append(client.close)
        ops = plan_ops(args.payments, args.mix_shares, client.app, run_id)
        tracker = Tracker(ops)
        ready = asyncio.Event()
        listener = asyncio.create_task(listen(client, f"bench-{run_id}", tracker, ready))
        await ready.wait()

        recorders = []
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for worker in workers:
                output = args.profile.resolve() / f"{worker.name}.collapsed"
                recorders.append(await profiles.Recorder.attach(worker.pid, output))
            await asyncio.sleep(1)  # py-spy attaches
        sampler = stack.CpuSampler(
            {**{p.name: p.pid for p in procs}, "bench": os.getpid()}, interval=0.25
        )
        sampler.start()
        others_before = stack.other_cpu_ticks()
        step(
            f"issuing {args.payments} payments "
            f"({'as fast as possible' if args.rate == 0 else f'{args.rate}/s'})"
        )
        started = time.perf_counter()
        driver = asyncio.create_task(drive(client, ops, tracker, args.rate, args.concurrency))
        settled = await wait_settled(tracker, args.stall_timeout)
        if driver.done():
            await driver
        else:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
        ended = time.perf_counter()
        step("all settled" if settled else "gave up waiting")
        for recorder in recorders:
            await recorder.stop()
        await sampler.stop()
        others_after = stack.other_cpu_ticks()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener

        result = summarise(
            args, ops, tracker, sampler, procs, started, ended, others_before, others_after
        )
        result["all_settled"] = settled
        result["sandbox"] = await sandbox_counts(sandbox_url)
        result["log_errors"] = {p.name: p.error_count() for p in procs if p.name != "sandbox"}
        if recorders:
            result["profiles"] = [str(r.output) for r in recorders]
        return {
            "benchmark": "e2e",
            "schema": 1,
            "started_at": stack.now_iso(),
            "machine": stack.machine_info(),
            "config": config_of(args, env),
            "result": result,
            "ceilings": ceiling,
            "ratios": {
                "throughput_vs_amqp_publish": _ratio(
                    result["throughput"]["steady_per_s"],
                    (ceiling.get("amqp") or {}).get("publish_confirm_per_s"),
                ),
                "throughput_vs_amqp_consume": _ratio(
                    result["throughput"]["steady_per_s"],
                    (ceiling.get("amqp") or {}).get("consume_ack_per_s"),
                ),
                "throughput_vs_db_transactions": _ratio(
                    result["throughput"]["steady_per_s"],
                    (ceiling.get("db") or {}).get("transactions_per_s"),
                ),
            },
            "targets": targets(args, result, ceiling),
        }
    except BaseException:
        for proc in procs:
            console.print(f"[red]{proc.name} log tail:[/red]\n{proc.tail()}")
        raise
    finally:
        step("stopping")
        for proc in reversed(procs):
            await proc.stop()
        for undo in reversed(cleanup):
            try:
                await undo()
            except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                console.print(f"[yellow]clean-up step failed: {exc!r}[/yellow]")
        step("cleaned up")
        if args.keep_logs:
            console.print(f"logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def summarise(
    args: argparse.Namespace,
    ops: Sequence[Op],
    tracker: Tracker,
    sampler: stack.CpuSampler,
    procs: Sequence[stack.Proc],
    started: float,
    ended: float,
    others_before: dict[str, int],
    others_after: dict[str, int],
) -> dict[str, Any]:
    completed = [
        op for op in ops if op.t_final is not None and op.final_type == str(EXPECTED_FINAL[op.kind])
    ]
    times = [op.t_final for op in completed if op.t_final is not None]
    calls = [op.t_call for op in ops if op.t_call is not None]
    first_call = min(calls) if calls else started
    last_final = max(times) if times else ended
    window = steady_window(times)
    steady = round(window[2] / (window[1] - window[0]), 2) if window else None
    span = last_final - first_call
    issue_span = (max(calls) - first_call) if len(calls) > 1 else 0.0
    by_kind = {
        kind: {
            "offered": sum(1 for op in ops if op.kind == kind),
            "completed": sum(1 for op in completed if op.kind == kind),
        }
        for kind in KINDS
    }
    finals: dict[str, int] = {}
    for op in ops:
        if op.final_type is not None:
            finals[op.final_type] = finals.get(op.final_type, 0) + 1

    processes = []
    worker_total = 0.0
    worker_window = 0.0
    for proc in procs:
        total_ms = sampler.ms_between(proc.name, first_call, last_final)
        window_ms = sampler.ms_between(proc.name, window[0], window[1]) if window else None
        if proc.name.startswith("worker"):
            worker_total += total_ms
            worker_window += window_ms or 0.0
        processes.append(
            {
                "name": proc.name,
                "pid": proc.pid,
                "cpu_ms": round(total_ms, 1),
                "cpu_ms_per_payment": round(total_ms / len(completed), 3) if completed else None,
                "cpu_ms_per_payment_steady": round(window_ms / window[2], 3)
                if window and window_ms is not None
                else None,
                "peak_rss_mb": proc.peak_rss_mb(),
                "kernel_share_of_cpu": proc.kernel_share(),
            }
        )
    bench_ms = sampler.ms_between("bench", first_call, last_final)
    processes.append(
        {
            "name": "bench (SDK driver + subscriber)",
            "pid": os.getpid(),
            "cpu_ms": round(bench_ms, 1),
            "cpu_ms_per_payment": round(bench_ms / len(completed), 3) if completed else None,
            "cpu_ms_per_payment_steady": round(
                sampler.ms_between("bench", window[0], window[1]) / window[2], 3
            )
            if window
            else None,
            "peak_rss_mb": round((stack.status_kb(os.getpid(), "VmHWM") or 0) / 1024, 1),
        }
    )
    servers = {
        name: {
            "cpu_ms": round(stack.ticks_to_ms(others_after[name] - others_before[name]), 1),
            "cpu_ms_per_payment": round(
                stack.ticks_to_ms(others_after[name] - others_before[name]) / len(completed), 3
            )
            if completed
            else None,
            "note": "whole run, every process of that name on this machine",
        }
        for name in others_before
    }
    return {
        "offered": len(ops),
        "completed": len(completed),
        "issue_errors": sum(1 for op in ops if op.error is not None),
        "finals": finals,
        "by_kind": by_kind,
        "duration_s": round(span, 3),
        "offered_rate_achieved_per_s": round((len(calls) - 1) / issue_span, 2)
        if issue_span > 0
        else None,
        "throughput": {
            "steady_per_s": steady,
            "overall_per_s": round(len(completed) / span, 2) if span > 0 else None,
            "window": {
                "rule": f"completions between the {TRIM:.0%} and the {1 - TRIM:.0%} completion",
                "start_s": round(window[0] - first_call, 3) if window else None,
                "end_s": round(window[1] - first_call, 3) if window else None,
                "completions": window[2] if window else None,
            },
        },
        "latency_ms": latencies(ops, args.provider_latency),
        "cpu": {
            "clock_ticks_per_s": stack.CLK_TCK,
            "worker_ms_per_payment": round(worker_total / len(completed), 3) if completed else None,
            "worker_ms_per_payment_steady": round(worker_window / window[2], 3) if window else None,
            "machine_busy_share_steady": sampler.machine_utilisation(window[0], window[1])
            if window
            else None,
            "processes": processes,
            "servers": servers,
        },
    }


def config_of(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    return {
        "payments": args.payments,
        "rate": args.rate or "as fast as possible",
        "concurrency": args.concurrency if args.rate == 0 else None,
        "workers": args.workers,
        "db": args.db,
        "provider_latency_s": args.provider_latency,
        "sandbox_settle_s": args.settle,
        "callbacks": "provider callbacks requested (MTN PUT to the worker)"
        if args.callbacks
        else "no callbacks: completion found by polling",
        "poll_delays_s": list(args.poll_delays),
        "mix": args.mix_shares,
        "provider": "MTN_CAMEROON → MTN_MOMO sandbox",
        "worker_settings": stack.stated_settings(env),
        "worker_env_overrides": args.overrides,
        "trim": f"first and last {TRIM:.0%} of completions (throughput) and issues (latency)",
    }


# -- output -------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def show(report: dict[str, Any], path: Path) -> None:
    config, result, ceiling = report["config"], report["result"], report["ceilings"]
    console.print(
        f"\n[bold]kunpay e2e[/bold] {config['payments']} payments, rate {config['rate']}, "
        f"{config['workers']} worker(s), {config['db']}, provider latency "
        f"{config['provider_latency_s']} s, settle {config['sandbox_settle_s']} s, "
        f"{config['callbacks']}, poll delays {config['poll_delays_s']} s, mix "
        f"{ {k: round(v, 3) for k, v in config['mix'].items() if v} }"
    )
    settings = config["worker_settings"]
    console.print(
        f"[dim]worker: prefetch {settings['KUNPAY_PREFETCH']}, provider calls in flight "
        f"{settings['KUNPAY_HTTP__MAX_CONCURRENT_CALLS']}, outbox sweep "
        f"{settings['KUNPAY_OUTBOX_SWEEP_INTERVAL']} s, log level "
        f"{settings['KUNPAY_LOG_LEVEL']}; {config['trim']}[/dim]"
    )
    throughput = result["throughput"]
    summary = Table(title="throughput", show_header=False)
    summary.add_row("completed / offered", f"{result['completed']} / {result['offered']}")
    summary.add_row("steady completed/s", _fmt(throughput["steady_per_s"]))
    summary.add_row("overall completed/s", _fmt(throughput["overall_per_s"]))
    summary.add_row("offered rate achieved/s", _fmt(result["offered_rate_achieved_per_s"]))
    summary.add_row(
        "worker CPU ms / payment (steady, all)",
        f"{_fmt(result['cpu']['worker_ms_per_payment_steady'], 2)}, "
        f"{_fmt(result['cpu']['worker_ms_per_payment'], 2)}",
    )
    summary.add_row("machine busy (steady)", _fmt(result["cpu"]["machine_busy_share_steady"], 2))
    summary.add_row("double initiations", str(result["sandbox"]["double_initiations"]))
    console.print(summary)

    lat = Table(title="latency ms (from the call)")
    for column in ("kind", "stage", "p50", "p95", "p99", "max", "n"):
        lat.add_column(column, justify="right" if column not in ("kind", "stage") else "left")
    for kind, figures in result["latency_ms"].items():
        for stage in ("call_return", "initiated", "final", "final_net_of_provider_latency"):
            f = figures[stage]
            lat.add_row(
                kind,
                stage,
                *(_fmt(f[k]) for k in ("p50", "p95", "p99", "max")),
                str(f["n"]),
            )
    console.print(lat)

    procs = Table(title="processes")
    for column in ("process", "CPU ms", "ms/payment", "ms/payment steady", "peak RSS MB"):
        procs.add_column(column, justify="left" if column == "process" else "right")
    for p in result["cpu"]["processes"]:
        procs.add_row(
            p["name"],
            _fmt(p["cpu_ms"], 0),
            _fmt(p["cpu_ms_per_payment"], 2),
            _fmt(p["cpu_ms_per_payment_steady"], 2),
            _fmt(p["peak_rss_mb"]),
        )
    for name, s in result["cpu"]["servers"].items():
        procs.add_row(f"{name} (server)", _fmt(s["cpu_ms"], 0), _fmt(s["cpu_ms_per_payment"], 2))
    console.print(procs)

    if ceiling:
        ceil = Table(title="ceilings (same run)")
        ceil.add_column("ceiling")
        ceil.add_column("value", justify="right")
        ceil.add_column("kunpay steady ÷ ceiling", justify="right")
        ratios = report["ratios"]
        amqp, db = ceiling["amqp"], ceiling["db"]
        ceil.add_row(
            "AMQP publish+confirm/s (64 in flight)",
            _fmt(amqp["publish_confirm_per_s"], 0),
            _fmt(ratios["throughput_vs_amqp_publish"], 4),
        )
        ceil.add_row(
            "AMQP publish+confirm round trip ms", _fmt(amqp["publish_confirm_round_trip_ms"], 3)
        )
        ceil.add_row(
            "AMQP consume+ack/s",
            _fmt(amqp["consume_ack_per_s"], 0),
            _fmt(ratios["throughput_vs_amqp_consume"], 4),
        )
        ceil.add_row(
            f"{db['kind']} insert+update transactions/s ({db['concurrency']} at once)",
            _fmt(db["transactions_per_s"], 0),
            _fmt(ratios["throughput_vs_db_transactions"], 4),
        )
        ceil.add_row(
            f"{db['kind']} transactions/s one at a time",
            _fmt(db["transactions_sequential_per_s"], 0),
        )
        console.print(ceil)

    goals = Table(title="targets (issue 7)")
    for column in ("target", "goal", "measured", "applies", "met", "vs ceilings (goal → measured)"):
        goals.add_column(column)
    for t in report["targets"]:
        ratios_text = ", ".join(
            f"{k} {_fmt(t['goal_vs_ceilings'][k], 4)} → {_fmt(t['measured_vs_ceilings'][k], 4)}"
            for k in t["goal_vs_ceilings"]
        )
        goals.add_row(
            t["target"],
            f"{t['goal']} {t['unit']}",
            _fmt(t["measured"], 2),
            "yes" if t["applies"] else f"no ({t['applies_when']})",
            {True: "[green]yes[/green]", False: "[red]no[/red]", None: "–"}[t["met"]],
            ratios_text,
        )
    console.print(goals)
    console.print(f"JSON: {path}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks.e2e", description="kunpay end-to-end benchmark (issue 7)"
    )
    parser.add_argument("--payments", type=int, default=2000, help="M: payments to issue")
    parser.add_argument(
        "--rate", type=float, default=0, help="offered payments/s; 0: as fast as possible"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=128,
        help="payments in flight (issued, final event not yet received) when --rate is 0",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=stack.POSTGRES_URL,
        help="a PostgreSQL cluster to create the run's database on (KUNPAY_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--amqp-url", default=stack.AMQP_URL, help="RabbitMQ (KUNPAY_BENCH_AMQP_URL)"
    )
    parser.add_argument(
        "--provider-latency", type=float, default=0.0, help="sandbox delay of every answer, s"
    )
    parser.add_argument(
        "--settle", type=float, default=0.0, help="sandbox: seconds until a payment settles"
    )
    parser.add_argument(
        "--callbacks",
        action="store_true",
        help="request provider callbacks (KUNPAY_PUBLIC_BASE_URL); default: polling only",
    )
    parser.add_argument(
        "--poll-delays",
        default=",".join(str(d) for d in stack.DEFAULT_POLL_DELAYS),
        help="KUNPAY_POLL__DELAYS, seconds, comma-separated",
    )
    parser.add_argument(
        "--mix",
        default="collections=1",
        help="shares, e.g. collections=0.8,payouts=0.1,refunds=0.1",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KUNPAY_NAME=VALUE",
        help="extra worker setting (repeatable), e.g. KUNPAY_PREFETCH=128",
    )
    parser.add_argument("--ceiling-messages", type=int, default=5000, help="0: skip ceilings")
    parser.add_argument("--ceiling-transactions", type=int, default=2000)
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="give up when no payment settled for this long",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each worker with py-spy (collapsed stacks) while payments run; "
        "summarise with python -m benchmarks.profiles DIR/worker-0.collapsed --per M",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run's directory")
    args = parser.parse_args(argv)
    if args.payments < 1 or args.workers < 1 or args.concurrency < 1:
        parser.error("--payments, --workers and --concurrency must be at least 1")
    args.mix_shares = parse_mix(args.mix)
    args.poll_delays = [float(d) for d in str(args.poll_delays).split(",") if d.strip()]
    args.overrides = stack.parse_overrides(args.worker_env)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(benchmark(args))
    path = args.json or stack.default_json_path("e2e")
    stack.write_json(path, report)
    show(report, path)
    return 0 if report["result"]["completed"] == report["result"]["offered"] else 1


if __name__ == "__main__":
    sys.exit(main())
