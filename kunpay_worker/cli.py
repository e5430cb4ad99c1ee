"""``kunpay-worker``: run the worker, migrate, run the provider sandbox, print the schema."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Annotated

import structlog
import typer
from pydantic import TypeAdapter
from pydantic import ValidationError as SettingsError
from rich.console import Console

from kunpay_sdk.contracts import (
    CollectCommand,
    DisburseCommand,
    Event,
    RefundCommand,
    RetryCommand,
    RpcReply,
    RpcRequest,
)
from kunpay_worker import logs
from kunpay_worker.settings import Settings

app = typer.Typer(
    name="kunpay-worker",
    help="kunpay's worker: payments over RabbitMQ to mobile money providers.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)


def _payment_types() -> typer.Typer:
    from kunpay_worker.payment_types import app as payment_types

    return payment_types


app.add_typer(_payment_types(), name="payment-types")


def _dlq() -> typer.Typer:
    from kunpay_worker.dlq_cli import app as dlq

    return dlq


app.add_typer(_dlq(), name="dlq")


def _operator_commands() -> None:
    from kunpay_worker.operator import pending, resolve

    app.command()(pending)
    app.command()(resolve)


_operator_commands()
log = structlog.get_logger("kunpay.cli")


def _settings() -> Settings:
    try:
        settings = Settings()
    except SettingsError as exc:
        err.print(f"[red]invalid configuration[/red]\n{exc}")
        raise typer.Exit(2) from exc
    logs.configure(settings.log_format, settings.log_level)
    return settings


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


@app.command()
def run(
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Apply pending database migrations first.")
    ] = False,
) -> None:
    """Consume commands, polls and requests until SIGTERM or SIGINT."""
    from kunpay_worker.app import ConfigurationError, Worker

    settings = _settings()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Worker(settings).run(stop, apply_migrations=migrate)

    try:
        _run(main())
    except ConfigurationError as exc:
        err.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command("migrate")
def migrate_command(
    database: Annotated[bool, typer.Option(help="Apply database migrations.")] = True,
    broker: Annotated[bool, typer.Option(help="Declare the RabbitMQ topology.")] = True,
) -> None:
    """Apply the database migrations and declare kunpay's exchanges and queues."""
    from kunpay_worker.app import declare_topology
    from kunpay_worker.storage import db

    settings = _settings()

    def progress(event: str, app_label: str, name: str) -> None:
        err.print(f"  {event:<8} {app_label}.{name}")

    async def main() -> None:
        if database:
            await db.migrate(settings, progress=progress)
            err.print("database: up to date")
        if broker:
            await declare_topology(settings)
            err.print("broker: topology declared")

    _run(main())


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(envvar="KUNPAY_SANDBOX_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="KUNPAY_SANDBOX_PORT")] = 8900,
    settle_seconds: Annotated[
        float, typer.Option(help="Seconds until a payment settles.", envvar="KUNPAY_SANDBOX_SETTLE")
    ] = 1.0,
    slow_seconds: Annotated[float, typer.Option(help="Delay of the slow scenario.")] = 60.0,
    late_seconds: Annotated[
        float, typer.Option(help="When a late success turns SUCCESSFUL.")
    ] = 5.0,
    callback_method: Annotated[str, typer.Option(help="PUT or POST, as MTN does.")] = "PUT",
    balance: Annotated[str, typer.Option(help="The merchant's payout balance.")] = "10000000",
    pawapay_callback_url: Annotated[
        str | None, typer.Option(help="Where PawaPay callbacks go (set on the account).")
    ] = None,
    pawapay_sign_callbacks: Annotated[
        bool,
        typer.Option(help="Sign PawaPay callbacks (RFC 9421) with a key served on the key API."),
    ] = False,
    flutterwave_webhook_url: Annotated[
        str | None, typer.Option(help="Where Flutterwave webhooks go (set on the account).")
    ] = None,
    flutterwave_secret_hash: Annotated[
        str, typer.Option(help="Flutterwave's secret hash for webhook headers.")
    ] = "sandbox-secret-hash",  # noqa: S107 - the sandbox's own, not a real secret
    latency: Annotated[
        float, typer.Option(min=0, help="Seconds every provider API answer waits (benchmarks).")
    ] = 0.0,
) -> None:
    """Serve the provider sandbox with its magic numbers (see the README)."""
    from aiohttp import web

    from kunpay_worker.sandbox import SandboxConfig, build_app

    logs.configure("auto", "INFO")
    if callback_method.upper() not in ("PUT", "POST"):
        err.print("[red]--callback-method must be PUT or POST[/red]")
        raise typer.Exit(2)
    application = build_app(
        SandboxConfig(
            settle_seconds=settle_seconds,
            slow_seconds=slow_seconds,
            late_seconds=late_seconds,
            callback_method=callback_method.upper(),
            balance=balance,
            pawapay_callback_url=pawapay_callback_url,
            pawapay_sign_callbacks=pawapay_sign_callbacks,
            flutterwave_webhook_url=flutterwave_webhook_url,
            flutterwave_secret_hash=flutterwave_secret_hash,
            latency_seconds=latency,
        )
    )
    log.info("sandbox listening", url=f"http://{host}:{port}")
    web.run_app(application, host=host, port=port, print=None, access_log=None)


@app.command("broker-setup")
def broker_setup_command() -> None:
    """Create or update kunpay's RabbitMQ users (worker, operators, apps) through the
    management API; safe to run again. See KUNPAY_BROKER_SETUP__* and the README."""
    from kunpay_worker.broker_setup import BrokerSetupError
    from kunpay_worker.broker_setup import run as setup

    settings = _settings()
    try:
        done = asyncio.run(setup(settings))
    except BrokerSetupError as exc:
        err.print(f"[red]broker set-up failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    for line in done:
        typer.echo(line)


@app.command()
def schema() -> None:
    """Print the JSON Schema of every command, event and request (for apps in other languages)."""
    schemas = {
        "CollectCommand": TypeAdapter(CollectCommand).json_schema(),
        "DisburseCommand": TypeAdapter(DisburseCommand).json_schema(),
        "RefundCommand": TypeAdapter(RefundCommand).json_schema(),
        "RetryCommand": TypeAdapter(RetryCommand).json_schema(),
        "Event": TypeAdapter(Event).json_schema(),
        "RpcRequest": TypeAdapter(RpcRequest).json_schema(),
        "RpcReply": TypeAdapter(RpcReply).json_schema(),
    }
    sys.stdout.write(json.dumps(schemas, indent=2) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
