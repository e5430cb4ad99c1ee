"""``kunpay-worker dlq list|show|replay|purge``: dead letters, from the ``dead_letters`` table.

The worker copies every message of ``kunpay.dead-letter`` into the table; these commands work on
rows, never on the queue. ``replay`` publishes with the broker user of ``KUNPAY_AMQP_URL`` (the
worker's, which may publish with the app's identity).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import aio_pika
import aiormq.exceptions
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kunpay_worker import dlq
from kunpay_worker.logs import mask_value
from kunpay_worker.messaging import Publisher
from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage.models import DeadLetter

app = typer.Typer(help="Dead letters: list, show, replay and purge them.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

T = TypeVar("T")


def _with_db(work: Callable[[], Awaitable[T]]) -> T:
    settings = Settings()

    async def main() -> T:
        await db.init(settings)
        try:
            return await work()
        finally:
            await db.close()

    return asyncio.run(main())


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows.")] = 50,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    replayed: Annotated[bool, typer.Option(help="Also those already replayed.")] = False,
) -> None:
    """Dead letters, newest first."""

    async def work() -> tuple[list[DeadLetter], int]:
        query = DeadLetter.all()
        if reason is not None:
            query = query.filter(reason=reason)
        if not replayed:
            query = query.filter(replayed_at__isnull=True)
        total = await query.count()
        return await query.order_by("-id").limit(limit), total

    rows, total = _with_db(work)
    table = Table(title=f"{len(rows)} of {total} dead letter(s)")
    for column in ("id", "reason", "app", "to", "attempts", "age", "error"):
        table.add_column(column, no_wrap=column in ("id", "reason"), overflow="fold")
    for row in rows:
        target = f"{row.exchange or '(default)'} → {row.routing_key or '-'}"
        table.add_row(
            str(row.id) + (" (replayed)" if row.replayed_at else ""),
            row.reason,
            row.app or "-",
            target,
            str(row.attempts),
            _age(row.created_at),
            str(mask_value((row.error or "")[:120])),
        )
    out.print(table)


@app.command()
def show(dead_letter: Annotated[int, typer.Argument(help="The row id (see dlq list).")]) -> None:
    """One dead letter: why, where from, headers and body (secrets and phone numbers masked)."""

    async def work() -> DeadLetter | None:
        return await DeadLetter.get_or_none(id=dead_letter)

    row = _with_db(work)
    if row is None:
        err.print(f"[red]no dead letter {dead_letter}[/red]")
        raise typer.Exit(1)
    body: Any
    try:
        body = json.loads(bytes(row.body))
    except ValueError:
        body = bytes(row.body).decode(errors="replace")
    shown = {
        "id": row.id,
        "reason": row.reason,
        "error": row.error,
        "app": row.app,
        "exchange": row.exchange,
        "routing_key": row.routing_key,
        "source_queue": row.source_queue,
        "attempts": row.attempts,
        "first_failed_at": row.first_failed_at.isoformat() if row.first_failed_at else None,
        "last_failed_at": row.last_failed_at.isoformat() if row.last_failed_at else None,
        "stored_at": row.created_at.isoformat(),
        "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None,
        "properties": row.properties,
        "headers": row.headers,
        "body": body,
    }
    out.print_json(json.dumps(mask_value(shown), default=str))


@app.command()
def replay(
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="This row (repeat for more).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Every row with this reason.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every row not replayed yet.")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Say what would be replayed; publish nothing.")
    ] = False,
) -> None:
    """Publish dead letters again to where they first went, then mark them replayed.

    The rows are those selected at the start. Safe to interrupt and run again: a message
    published but not yet marked is published again, which the worker's idempotency makes
    harmless. Fix what made them fail first."""
    chosen = [bool(ids), reason is not None, every]
    if sum(chosen) != 1:
        raise typer.BadParameter("say which: --id ID (repeatable), --reason R or --all")
    settings = Settings()

    async def work() -> tuple[int, int, list[str]]:
        rows = await dlq.select_for_replay(ids=ids or (), reason=reason, every=every)
        if ids:
            missing = sorted(set(ids) - {row.id for row in rows})
            if missing:
                err.print(f"[yellow]not found or already replayed: {missing}[/yellow]")
        if dry_run or not rows:
            for row in rows:
                exchange, key = row.exchange or "(default)", row.routing_key
                out.print(f"would replay {row.id} ({row.reason}) → {exchange} {key}")
            return 0, len(rows), []
        connection = await aio_pika.connect_robust(settings.amqp_url.get_secret_value())
        replayed, problems = 0, []
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            publisher = Publisher(channel, timeout=30)
            with Progress(console=err, transient=False) as progress:
                task = progress.add_task("replaying", total=len(rows))
                for row in rows:
                    try:
                        await dlq.replay(row, publisher)
                    except dlq.NotReplayable as exc:
                        problems.append(str(exc))
                    except (aiormq.exceptions.AMQPError, aio_pika.exceptions.PublishError) as exc:
                        problems.append(f"{row.id}: the broker refused it ({exc!r})")
                        channel = await connection.channel(
                            publisher_confirms=True, on_return_raises=True
                        )
                        publisher = Publisher(channel, timeout=30)
                    else:
                        replayed += 1
                        out.print(f"replayed {row.id}", highlight=False)
                    progress.advance(task)
        finally:
            await connection.close()
        return replayed, len(rows), problems

    replayed, selected, problems = _with_db(work)
    for problem in problems:
        err.print(f"[red]not replayed:[/red] {problem}")
    verb = "would replay" if dry_run else "replayed"
    out.print(f"{verb} {selected if dry_run else replayed} of {selected} dead letter(s)")
    if problems:
        raise typer.Exit(1)


@app.command()
def purge(
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    replayed: Annotated[
        bool, typer.Option("--replayed", help="Only rows already replayed.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
) -> None:
    """Delete dead-letter rows (for good)."""
    if not yes:
        raise typer.BadParameter("deleting is for good: add --yes", param_hint="--yes")

    async def work() -> int:
        query = DeadLetter.all()
        if reason is not None:
            query = query.filter(reason=reason)
        if replayed:
            query = query.filter(replayed_at__isnull=False)
        return await query.delete()

    out.print(f"deleted {_with_db(work)} dead letter(s)")
