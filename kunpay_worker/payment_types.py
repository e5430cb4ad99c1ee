"""``kunpay-worker payment-types``: the priced ways to pay, managed from the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kunpay_sdk.money import CURRENCY_EXPONENTS
from kunpay_sdk.msisdn import PROVIDER_OPERATORS
from kunpay_worker.domain.fees import FeeError
from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage.models import PaymentType

app = typer.Typer(help="Manage payment types (fees applied by quote() and money operations).")
out = Console()
err = Console(stderr=True)

FEE_FIELDS = (
    "fixed_provider_fee",
    "percentage_provider_fee",
    "fixed_platform_fee",
    "percentage_platform_fee",
)


def _decimal(value: str | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        parsed = Decimal(value)
    except InvalidOperation as exc:
        raise typer.BadParameter(f"{value!r} is not a number", param_hint=name) from exc
    if not parsed.is_finite() or parsed < 0:
        raise typer.BadParameter("must be zero or more", param_hint=name)
    return parsed


def _run(settings: Settings, work: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await db.init(settings)
        try:
            await work()
        finally:
            await db.close()

    asyncio.run(main())


def _check(row: PaymentType) -> None:
    if row.provider not in PROVIDER_OPERATORS:
        known = ", ".join(sorted(PROVIDER_OPERATORS))
        raise typer.BadParameter(
            f"unknown provider key {row.provider!r}; known: {known}", param_hint="--provider"
        )
    if row.currency not in CURRENCY_EXPONENTS:
        raise typer.BadParameter(f"unknown currency {row.currency!r}", param_hint="--currency")
    try:
        row.fee_schedule()
    except FeeError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _fee(percentage: Decimal, fixed: Decimal) -> str:
    return f"{percentage.normalize():f}% + {fixed.normalize():f}"


def _show(rows: list[PaymentType]) -> None:
    table = Table(title="payment types")
    for column in ("short name", "name", "class", "provider", "currency", "active"):
        table.add_column(column)
    for column in ("provider fee", "platform fee"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.short_name,
            row.name,
            row.payment_class,
            row.provider,
            row.currency,
            "yes" if row.is_active else "no",
            _fee(row.percentage_provider_fee, row.fixed_provider_fee),
            _fee(row.percentage_platform_fee, row.fixed_platform_fee),
        )
    out.print(table)


Fee = Annotated[str | None, typer.Option(help="A decimal number, zero or more.")]


@app.command("list")
def list_command(
    all_: Annotated[bool, typer.Option("--all", help="Include inactive ones.")] = False,
) -> None:
    """Show the payment types."""
    settings = Settings()

    async def work() -> None:
        query = PaymentType.all() if all_ else PaymentType.filter(is_active=True)
        _show(await query.order_by("short_name"))

    _run(settings, work)


@app.command()
def add(
    name: Annotated[str, typer.Option(help="Display name.")],
    short_name: Annotated[str, typer.Option(help="What apps pass as payment_type.")],
    payment_class: Annotated[
        str, typer.Option("--class", help="Payment class, e.g. mobile_money.")
    ],
    provider: Annotated[str, typer.Option(help="Provider key, e.g. MTN_CAMEROON.")],
    currency: Annotated[str, typer.Option()] = "XAF",
    fixed_provider_fee: Fee = "0",
    percentage_provider_fee: Fee = "0",
    fixed_platform_fee: Fee = "0",
    percentage_platform_fee: Fee = "0",
) -> None:
    """Add a payment type."""
    settings = Settings()
    fees = {
        "fixed_provider_fee": _decimal(fixed_provider_fee, "--fixed-provider-fee"),
        "percentage_provider_fee": _decimal(percentage_provider_fee, "--percentage-provider-fee"),
        "fixed_platform_fee": _decimal(fixed_platform_fee, "--fixed-platform-fee"),
        "percentage_platform_fee": _decimal(percentage_platform_fee, "--percentage-platform-fee"),
    }
    row = PaymentType(
        name=name,
        short_name=short_name,
        payment_class=payment_class,
        provider=provider,
        currency=currency,
        is_active=True,
        **fees,
    )
    _check(row)

    async def work() -> None:
        if await PaymentType.filter(short_name=short_name).exists():
            err.print(f"[red]a payment type {short_name!r} exists already: use update[/red]")
            raise typer.Exit(1)
        await row.save()
        _show([row])

    _run(settings, work)


@app.command()
def update(
    short_name: Annotated[str, typer.Argument()],
    name: Annotated[str | None, typer.Option()] = None,
    payment_class: Annotated[str | None, typer.Option("--class")] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    currency: Annotated[str | None, typer.Option()] = None,
    fixed_provider_fee: Fee = None,
    percentage_provider_fee: Fee = None,
    fixed_platform_fee: Fee = None,
    percentage_platform_fee: Fee = None,
    activate: Annotated[bool, typer.Option("--activate", help="Make it active again.")] = False,
) -> None:
    """Change a payment type; transactions already made keep the fees they were priced with."""
    settings = Settings()
    changes: dict[str, Any] = {
        key: value
        for key, value in {
            "name": name,
            "payment_class": payment_class,
            "provider": provider,
            "currency": currency,
        }.items()
        if value is not None
    }
    for field, value in zip(
        FEE_FIELDS,
        (fixed_provider_fee, percentage_provider_fee, fixed_platform_fee, percentage_platform_fee),
        strict=True,
    ):
        parsed = _decimal(value, "--" + field.replace("_", "-"))
        if parsed is not None:
            changes[field] = parsed
    if activate:
        changes["is_active"] = True

    async def work() -> None:
        row = await PaymentType.get_or_none(short_name=short_name)
        if row is None:
            err.print(f"[red]no payment type {short_name!r}[/red]")
            raise typer.Exit(1)
        for key, value in changes.items():
            setattr(row, key, value)
        _check(row)
        await row.save()
        _show([row])

    _run(settings, work)


@app.command()
def deactivate(short_name: Annotated[str, typer.Argument()]) -> None:
    """Stop a payment type from being used (kept for the transactions that used it)."""
    settings = Settings()

    async def work() -> None:
        updated = await PaymentType.filter(short_name=short_name).update(is_active=False)
        if not updated:
            err.print(f"[red]no payment type {short_name!r}[/red]")
            raise typer.Exit(1)
        out.print(f"{short_name} deactivated")

    _run(settings, work)
