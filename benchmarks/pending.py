"""Polling benchmark (issue 7): one worker polling at a fixed rate among K PENDING payments.

::

    .venv/bin/python -m benchmarks.pending --pending 1000,10000,100000 --db sqlite
    .venv/bin/python benchmarks/pending.py --pending 100000 --db postgres --poll-rate 20

How kunpay polls (``kunpay_worker/engine.py``, ``polling.py``, ``janitor.py``,
``storage/repository.py``): a PENDING transaction's row holds ``poll_seq``, ``poll_count`` and
``next_poll_at``. During its check schedule (``KUNPAY_POLL__DELAYS``, by default 15 s … 480 s:
about 16 minutes) each check is a poll message in a per-TTL delay queue, written to the outbox
with the row's update; the message dead-letters into ``kunpay.poll`` when due. Once the schedule
is spent, no message is kept: ``next_poll_at`` is set ``KUNPAY_POLL__JANITOR_INTERVAL`` (an
hour) ahead and the **janitor** — one sweep at a time under a database lease, every
``KUNPAY_JANITOR__SWEEP_INTERVAL`` — selects up to ``KUNPAY_JANITOR__BATCH`` PENDING rows whose
``next_poll_at`` is more than ``KUNPAY_JANITOR__GRACE`` overdue, and for each, in its own DB
transaction, bumps ``poll_seq`` and writes a poll message straight to ``kunpay.poll``. The poll
consumer loads the row, asks the provider, and records the check, which sets ``next_poll_at``
an hour ahead again.

So a large PENDING population is, almost entirely, rows past their schedule, polled hourly by
the janitor with no message waiting in RabbitMQ; this benchmark measures that state.

Design, for each K of ``--pending`` (a fresh vhost, database, sandbox and worker each time):

1. ``kunpay-worker migrate``, then K − D rows seeded directly in the database with the worker's
   Tortoise models (a transaction PENDING / initiation SENT with its provider reference,
   ``poll_count`` = the schedule's length, ``poll_seq`` 1, and its first status row), their
   ``next_poll_at`` spread evenly over the hour that follows the measurement: present in the
   table and its indexes, never due while we measure.
2. One worker starts (janitor sweep every 1 s, grace 2 s; other settings the worker's defaults).
3. The D = ``--poll-rate`` × ``--window`` rows to be polled get their provider references
   registered in the sandbox (MTN requests to pay from the "stays PENDING" number, so every
   lookup answers PENDING and the row stays PENDING).
4. ``--idle`` seconds with nothing due: the worker's idle CPU (janitor sweeps over K rows,
   outbox sweeps), in ms per second.
5. The D rows are inserted with ``next_poll_at`` spaced 1 / rate apart, starting a second later:
   the janitor finds them overdue at the fixed rate, whatever K. The window starts when the
   first of them is overdue (due + grace) and lasts until the sandbox has seen every one of
   them looked up; then the database must show each of them checked.

Reported per K: worker CPU per poll over the window (and net of the idle rate), idle CPU ms/s,
polls/s achieved, lag from due to recorded (p50/p99; it includes the grace and the sweep
interval), the worker's peak RSS (VmHWM) and RSS now, PostgreSQL's CPU per poll, seeding time.
Targets: peak RSS ≤ 250 MB, and CPU per poll not growing with K (each K's figure divided by the
smallest K's; "met" when ≤ 1.25, a noise allowance), each also as raw DB transactions' worth of
time measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/pending.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from pydantic import SecretStr
from rich.table import Table
from tortoise import Tortoise
from tortoise.transactions import in_transaction

from benchmarks import ceilings, stack
from kunpay_sdk.contracts import Status, TransactionType
from kunpay_worker.settings import Settings
from kunpay_worker.storage.models import Initiation, Transaction, TransactionStatus

console = stack.console
step = stack.step

# The worker's production check schedule: seeded rows have spent it.
PRODUCTION_POLL_DELAYS = [15.0, 30.0, 60.0, 120.0, 240.0, 480.0]
PENDING_NUMBER = "237670000010"  # the sandbox's "stays PENDING" number
JANITOR_ENV = {
    "KUNPAY_JANITOR__SWEEP_INTERVAL": "1",
    "KUNPAY_JANITOR__GRACE": "2",
    "KUNPAY_JANITOR__LEASE": "30",
}
HOUR = 3600.0
CHUNK = 5000
RSS_GOAL_MB = 250.0
GROWTH_TOLERANCE = 1.25


# -- seeding ------------------------------------------------------------------------------------


def _rows(
    references: Sequence[str], dues: Sequence[datetime], created: datetime
) -> tuple[list[Transaction], list[TransactionStatus]]:
    transactions, statuses = [], []
    for reference, due in zip(references, dues, strict=True):
        tx_id = uuid.uuid4()
        transactions.append(
            Transaction(
                id=tx_id,
                app="guest",
                type=TransactionType.COLLECTION,
                operation="collect",
                idempotency_key=f"seed-{tx_id}",
                fingerprint="0" * 64,
                command_id=uuid.uuid4(),
                provider="MTN_CAMEROON",
                backend="MTN_MOMO",
                amount=Decimal("5000"),
                currency="XAF",
                phone_number="+" + PENDING_NUMBER,
                order_id=f"order-{tx_id.hex[:12]}",
                user_id="bench",
                status=Status.PENDING,
                provider_reference=reference,
                initiation=Initiation.SENT,
                send_attempts=1,
                poll_seq=1,
                poll_count=len(PRODUCTION_POLL_DELAYS),
                next_poll_at=due,
                event_seq=1,
                created_at=created,
                updated_at=created,
            )
        )
        statuses.append(
            TransactionStatus(
                transaction_id=tx_id,
                status=Status.PENDING,
                actor="worker",
                event_id=uuid.uuid4(),
                event_type="payment.initiated",
                sequence=1,
                created_at=created,
            )
        )
    return transactions, statuses


async def seed(references: Sequence[str], dues: Sequence[datetime]) -> None:
    """PENDING rows past their check schedule, in chunks (one DB transaction each)."""
    created = datetime.now(UTC) - timedelta(hours=2)
    for start in range(0, len(references), CHUNK):
        transactions, statuses = _rows(
            references[start : start + CHUNK], dues[start : start + CHUNK], created
        )
        async with in_transaction():
            await Transaction.bulk_create(transactions, batch_size=1000)
            await TransactionStatus.bulk_create(statuses, batch_size=1000)


async def register(sandbox_url: str, references: Sequence[str]) -> None:
    """Make the sandbox know ``references`` (requests to pay that stay PENDING), so the
    worker's lookups find them."""
    env = stack.BASE_WORKER_ENV
    key = env["KUNPAY_MTN_MOMO__COLLECTION__SUBSCRIPTION_KEY"]
    basic = base64.b64encode(
        f"{env['KUNPAY_MTN_MOMO__COLLECTION__API_USER']}:"
        f"{env['KUNPAY_MTN_MOMO__COLLECTION__API_KEY']}".encode()
    ).decode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.post(
            f"{sandbox_url}/collection/token/",
            headers={"Ocp-Apim-Subscription-Key": key, "Authorization": f"Basic {basic}"},
        ) as resp:
            resp.raise_for_status()
            token = (await resp.json())["access_token"]
        slots = asyncio.Semaphore(32)

        async def one(reference: str) -> None:
            async with (
                slots,
                http.post(
                    f"{sandbox_url}/collection/v1_0/requesttopay",
                    headers={
                        "Ocp-Apim-Subscription-Key": key,
                        "Authorization": f"Bearer {token}",
                        "X-Reference-Id": reference,
                        "X-Target-Environment": "sandbox",
                    },
                    json={
                        "amount": "5000",
                        "currency": "XAF",
                        "externalId": reference,
                        "payer": {"partyIdType": "MSISDN", "partyId": PENDING_NUMBER},
                        "payerMessage": "bench",
                        "payeeNote": "bench",
                    },
                ) as resp,
            ):
                if resp.status != 202:
                    raise RuntimeError(f"the sandbox refused {reference}: {resp.status}")

        await asyncio.gather(*(one(r) for r in references))


async def lookups(sandbox_url: str, references: set[str]) -> tuple[int, int]:
    """(references of ``references`` looked up at least once, lookups of them in all)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(f"{sandbox_url}/_sandbox/mtn/requests") as resp,
    ):
        counts = (await resp.json())["lookups"]
    seen = [n for ref, n in counts.items() if ref in references]
    return len(seen), sum(seen)


# -- one K --------------------------------------------------------------------------------------


async def measure_size(args: argparse.Namespace, size: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="kunpay-bench-pending-"))
    cleanup: list[Any] = []
    worker: stack.Proc | None = None
    sandbox: stack.Proc | None = None
    due_count = min(size, max(1, round(args.poll_rate * args.window)))
    background = size - due_count
    try:
        vhost = await stack.Vhost.create(args.amqp_url, "kunpay-bench")
        cleanup.append(vhost.delete)
        database = await stack.Database.create(args.db, directory, args.postgres_url, "pending")
        cleanup.append(database.drop)
        sandbox, sandbox_url = await stack.start_sandbox(
            directory, latency=args.provider_latency, settle=1.0
        )
        env = stack.worker_env(
            amqp_url=vhost.url,
            database_url=database.url,
            sandbox_url=sandbox_url,
            poll_delays=PRODUCTION_POLL_DELAYS,
            provider_latency=args.provider_latency,
            overrides={**JANITOR_ENV, **args.overrides},
        )
        await stack.migrate(env)

        await Tortoise.init(config=Settings(database_url=SecretStr(database.url)).tortoise_config())
        cleanup.append(Tortoise.close_connections)
        step(f"K={size}: seeding {background} rows not due during the measurement")
        seeding = time.perf_counter()
        # After the idle phase and the window (with room to spare), over the next hour.
        later = datetime.now(UTC) + timedelta(seconds=args.idle + args.window + 600)
        await seed(
            [str(uuid.uuid4()) for _ in range(background)],
            [later + timedelta(seconds=i * HOUR / max(background, 1)) for i in range(background)],
        )
        seed_s = time.perf_counter() - seeding

        step(f"K={size}: starting the worker")
        worker = await stack.start_worker(directory, 0, env, callbacks=False)
        references = [str(uuid.uuid4()) for _ in range(due_count)]
        await register(sandbox_url, references)

        sampler = stack.CpuSampler({"worker": worker.pid}, interval=0.25)
        sampler.start()
        step(f"K={size}: {args.idle} s idle")
        idle_start = time.perf_counter()
        await asyncio.sleep(args.idle)
        idle_end = time.perf_counter()

        step(f"K={size}: {due_count} rows due at {args.poll_rate}/s")
        first_due = datetime.now(UTC) + timedelta(seconds=1)
        # The first row is overdue (and the janitor may take it) once the grace has passed.
        grace = float(env["KUNPAY_JANITOR__GRACE"])
        window_start = time.perf_counter() + 1 + grace
        dues = [first_due + timedelta(seconds=i / args.poll_rate) for i in range(due_count)]
        others_before = stack.other_cpu_ticks()
        await seed(references, dues)
        wanted = set(references)
        deadline = time.monotonic() + args.window + 120
        seen, total_lookups = 0, 0
        while time.monotonic() < deadline:
            seen, total_lookups = await lookups(sandbox_url, wanted)
            if seen >= due_count:
                break
            await asyncio.sleep(0.25)
        window_end = time.perf_counter()
        await asyncio.sleep(1)  # the last checks' records commit
        others_after = stack.other_cpu_ticks()
        await sampler.stop()
        peak_rss, rss = worker.peak_rss_mb(), worker.rss_mb()

        rows = await Transaction.filter(provider_reference__in=references).values(
            "poll_count", "updated_at", "provider_reference"
        )
        due_of = dict(zip(references, dues, strict=True))
        checked = [r for r in rows if r["poll_count"] > len(PRODUCTION_POLL_DELAYS)]
        lags = [
            (r["updated_at"] - due_of[r["provider_reference"]]).total_seconds() for r in checked
        ]
        duration = window_end - window_start
        window_ms = sampler.ms_between("worker", window_start, window_end)
        idle_rate = sampler.ms_between("worker", idle_start, idle_end) / (idle_end - idle_start)
        polls = len(checked)
        postgres_ms = stack.ticks_to_ms(others_after["postgres"] - others_before["postgres"])
        return {
            "pending": size,
            "seeded_not_due": background,
            "seed_s": round(seed_s, 1),
            "due_in_window": due_count,
            "polls_checked": polls,
            "lookups_seen": seen,
            "extra_lookups": total_lookups - seen,
            "window_s": round(duration, 2),
            "polls_per_s": round(polls / duration, 2) if duration > 0 else None,
            "worker_cpu_ms_window": round(window_ms, 1),
            "worker_cpu_ms_per_poll": round(window_ms / polls, 3) if polls else None,
            "worker_cpu_ms_per_poll_net_of_idle": round(
                (window_ms - idle_rate * duration) / polls, 3
            )
            if polls
            else None,
            "worker_idle_cpu_ms_per_s": round(idle_rate, 2),
            "postgres_cpu_ms_per_poll": round(postgres_ms / polls, 3)
            if polls and args.db == "postgres"
            else None,
            "lag_due_to_recorded_ms": stack.percentiles([lag * 1000 for lag in lags]),
            "worker_peak_rss_mb": peak_rss,
            "worker_rss_mb": rss,
            "worker_log_errors": worker.error_count(),
        }
    except BaseException:
        for proc in (worker, sandbox):
            if proc is not None:
                console.print(f"[red]{proc.name} log tail:[/red]\n{proc.tail()}")
        raise
    finally:
        for proc in (worker, sandbox):
            if proc is not None:
                await proc.stop()
        for undo in reversed(cleanup):
            try:
                await undo()
            except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                console.print(f"[yellow]clean-up step failed: {exc!r}[/yellow]")
        if args.keep_logs:
            console.print(f"logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


async def ceiling_of(args: argparse.Namespace) -> dict[str, Any]:
    if args.ceiling_messages <= 0:
        return {}
    directory = Path(tempfile.mkdtemp(prefix="kunpay-bench-ceiling-"))
    vhost = await stack.Vhost.create(args.amqp_url, "kunpay-bench")
    database = await stack.Database.create(args.db, directory, args.postgres_url, "ceiling")
    try:
        step("measuring the ceilings")
        return await ceilings.measure(
            amqp_url=vhost.url,
            db_url=database.url,
            messages=args.ceiling_messages,
            transactions=args.ceiling_transactions,
        )
    finally:
        await database.drop()
        await vhost.delete()
        shutil.rmtree(directory, ignore_errors=True)


def targets(sizes: list[dict[str, Any]], ceiling: dict[str, Any]) -> list[dict[str, Any]]:
    db_sequential = (ceiling.get("db") or {}).get("transactions_sequential_per_s")
    base = next((s["worker_cpu_ms_per_poll"] for s in sizes if s["worker_cpu_ms_per_poll"]), None)
    found = []
    for s in sizes:
        cpu = s["worker_cpu_ms_per_poll"]
        growth = round(cpu / base, 3) if cpu and base else None
        found += [
            {
                "target": f"worker peak RSS at K={s['pending']}",
                "goal": RSS_GOAL_MB,
                "unit": "MB",
                "measured": s["worker_peak_rss_mb"],
                "met": s["worker_peak_rss_mb"] <= RSS_GOAL_MB
                if s["worker_peak_rss_mb"] is not None
                else None,
            },
            {
                "target": f"CPU per poll at K={s['pending']} ÷ at K={sizes[0]['pending']}",
                "goal": GROWTH_TOLERANCE,
                "unit": "×",
                "measured": growth,
                "met": growth <= GROWTH_TOLERANCE if growth is not None else None,
                "cpu_ms_per_poll_in_raw_db_transactions": round(cpu * db_sequential / 1000, 3)
                if cpu and db_sequential
                else None,
            },
        ]
    return found


def show(report: dict[str, Any], path: Path) -> None:
    config = report["config"]
    console.print(
        f"\n[bold]kunpay pending[/bold] {config['db']}, one worker, polls at "
        f"{config['poll_rate']}/s for {config['window']} s, provider latency "
        f"{config['provider_latency_s']} s; janitor {config['janitor']}; check schedule "
        f"{config['poll_delays_s']} s then every {config['janitor_interval_s']} s"
    )
    table = Table(title="polling among K PENDING payments")
    columns = (
        "K",
        "seed s",
        "polls",
        "polls/s",
        "CPU ms/poll",
        "net of idle",
        "idle ms/s",
        "lag p50 ms",
        "lag p99 ms",
        "peak RSS MB",
        "RSS MB",
        "postgres ms/poll",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for s in report["sizes"]:
        lag = s["lag_due_to_recorded_ms"]
        table.add_row(
            f"{s['pending']:,}",
            str(s["seed_s"]),
            f"{s['polls_checked']}/{s['due_in_window']}",
            str(s["polls_per_s"]),
            str(s["worker_cpu_ms_per_poll"]),
            str(s["worker_cpu_ms_per_poll_net_of_idle"]),
            str(s["worker_idle_cpu_ms_per_s"]),
            str(lag["p50"]),
            str(lag["p99"]),
            str(s["worker_peak_rss_mb"]),
            str(s["worker_rss_mb"]),
            str(
                s["postgres_cpu_ms_per_poll"] if s["postgres_cpu_ms_per_poll"] is not None else "–"
            ),
        )
    console.print(table)
    goals = Table(title="targets (issue 7)")
    for column in ("target", "goal", "measured", "met", "in raw DB transactions"):
        goals.add_column(column)
    for t in report["targets"]:
        goals.add_row(
            t["target"],
            f"{t['goal']} {t['unit']}",
            str(t["measured"]),
            {True: "[green]yes[/green]", False: "[red]no[/red]", None: "–"}[t["met"]],
            str(t.get("cpu_ms_per_poll_in_raw_db_transactions", "")),
        )
    console.print(goals)
    console.print(f"JSON: {path}")


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    ceiling = await ceiling_of(args)
    sizes = []
    for size in args.sizes:
        sizes.append(await measure_size(args, size))
    return {
        "benchmark": "pending",
        "schema": 1,
        "started_at": stack.now_iso(),
        "machine": stack.machine_info(),
        "config": {
            "pending": args.sizes,
            "db": args.db,
            "poll_rate": args.poll_rate,
            "window": args.window,
            "idle_s": args.idle,
            "provider_latency_s": args.provider_latency,
            "poll_delays_s": PRODUCTION_POLL_DELAYS,
            "janitor_interval_s": HOUR,
            "janitor": {
                k.removeprefix("KUNPAY_JANITOR__").lower(): v for k, v in JANITOR_ENV.items()
            },
            "worker_env_overrides": args.overrides,
            "design": "K − D rows due after the measurement (spread over the hour); D = rate × "
            "window rows due 1/rate apart during it; see the module docstring",
        },
        "sizes": sizes,
        "ceilings": ceiling,
        "targets": targets(sizes, ceiling),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks.pending", description="kunpay polling benchmark (issue 7)"
    )
    parser.add_argument("--pending", default="1000,10000,100000", help="K values, comma-separated")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=stack.POSTGRES_URL)
    parser.add_argument("--amqp-url", default=stack.AMQP_URL)
    parser.add_argument("--poll-rate", type=float, default=20.0, help="polls per second")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of polling")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measurement")
    parser.add_argument("--provider-latency", type=float, default=0.0)
    parser.add_argument("--worker-env", action="append", default=[], metavar="KUNPAY_NAME=VALUE")
    parser.add_argument("--ceiling-messages", type=int, default=2000, help="0: skip ceilings")
    parser.add_argument("--ceiling-transactions", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(v.replace("_", "")) for v in str(args.pending).split(",") if v.strip()]
    except ValueError:
        parser.error("--pending takes whole numbers, comma-separated")
    if not args.sizes or min(args.sizes) < 1 or args.poll_rate <= 0 or args.window <= 0:
        parser.error("--pending, --poll-rate and --window must be positive")
    args.overrides = stack.parse_overrides(args.worker_env)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(benchmark(args))
    path = args.json or stack.default_json_path("pending")
    stack.write_json(path, report)
    show(report, path)
    every = all(s["polls_checked"] == s["due_in_window"] for s in report["sizes"])
    return 0 if every else 1


if __name__ == "__main__":
    sys.exit(main())
