"""``kunpay-worker pending`` and ``kunpay-worker resolve``: the stale-payment runbook's tools."""

from __future__ import annotations

import asyncio
import getpass
import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tortoise.expressions import Q

from kunpay_sdk.contracts import Status
from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.models import Transaction

out = Console()
err = Console(stderr=True)


def _age(moment: datetime) -> str:
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m{seconds % 60}s"


def pending(
    stale: Annotated[
        bool, typer.Option("--stale", help="Only those the janitor gave up on.")
    ] = False,
    unresolved: Annotated[
        bool,
        typer.Option(
            "--unresolved", help="Also FAILED ones whose outcome the provider never confirmed."
        ),
    ] = False,
    limit: Annotated[int, typer.Option(min=1)] = 100,
) -> None:
    """List PENDING transactions (oldest first), or the stale ones."""
    settings = Settings()

    async def main() -> None:
        await db.init(settings)
        try:
            condition = Q(status=Status.PENDING)
            if stale:
                condition &= Q(stale=True)
            if unresolved:
                condition |= Q(status=Status.FAILED, needs_reconciliation=True)
            rows = await Transaction.filter(condition).order_by("created_at").limit(limit)
        finally:
            await db.close()
        table = Table(title=f"{len(rows)} transaction(s)")
        for column in ("id", "app", "type", "provider", "amount", "status", "age", "next check"):
            table.add_column(column, no_wrap=column in ("id", "status"))
        table.add_column("flags", no_wrap=True)
        for tx in rows:
            flags = [
                f for f, on in (("stale", tx.stale), ("reconcile", tx.needs_reconciliation)) if on
            ]
            table.add_row(
                str(tx.id),
                tx.app,
                str(tx.type),
                f"{tx.provider} ({tx.backend})",
                f"{tx.amount.normalize():f} {tx.currency}",
                str(tx.status),
                _age(tx.created_at),
                tx.next_poll_at.isoformat(timespec="seconds") if tx.next_poll_at else "-",
                " ".join(flags),
            )
        out.print(table)

    asyncio.run(main())


def resolve(
    transaction: Annotated[str, typer.Argument(help="The transaction id.")],
    status: Annotated[str, typer.Option(help="completed or failed.")],
    reason: Annotated[str, typer.Option(help="Why: kept in the status log.")],
    by: Annotated[
        str | None, typer.Option(help="Who resolves it (default: the system user).")
    ] = None,
    manual_refund_id: Annotated[
        str | None, typer.Option(help="For a refund made by hand: its id at the provider.")
    ] = None,
) -> None:
    """Settle a PENDING transaction (or one that needs reconciliation) by hand, after checking
    with the provider: audited (who, why) and announced like any other transition. A running
    worker's outbox relay publishes the event."""
    settings = Settings()
    try:
        tx_id = uuid.UUID(transaction)
    except ValueError as exc:
        raise typer.BadParameter("not a transaction id", param_hint="TRANSACTION") from exc
    target = {"completed": Status.COMPLETED, "failed": Status.FAILED}.get(status.lower())
    if target is None:
        raise typer.BadParameter("completed or failed", param_hint="--status")
    if not reason.strip():
        raise typer.BadParameter("say why", param_hint="--reason")
    if len(reason.strip()) > 400:
        raise typer.BadParameter("at most 400 characters", param_hint="--reason")
    actor = f"operator:{by or getpass.getuser()}"

    async def main() -> None:
        await db.init(settings)
        try:
            event = await repo.resolve(
                tx_id, target, reason.strip(), actor=actor, manual_refund_id=manual_refund_id
            )
        except repo.CannotResolve as exc:
            err.print(f"[red]cannot resolve:[/red] {exc}")
            raise typer.Exit(1) from exc
        finally:
            await db.close()
        what = event.type if event else "recorded (no status change to announce)"
        out.print(f"{tx_id}: {target} by {actor} — {what}")

    asyncio.run(main())
