"""Real parts for integration tests: a RabbitMQ vhost, a database, the sandbox, worker processes.

Each :class:`Stack` gets its own vhost and database, so stacks never see each other's messages.
Workers run as real ``kunpay-worker run`` processes; their JSON log lines are read as they come,
so a test can await "command handled" for a command id instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from aiohttp import web

from kunpay_sdk import Event, KunPayClient
from kunpay_worker.sandbox import SandboxConfig, build_app
from kunpay_worker.sandbox.app import MTN_KEY, SIMULATORS_KEY
from kunpay_worker.sandbox.common import Simulator
from kunpay_worker.sandbox.faults import Faults
from kunpay_worker.sandbox.mtn_momo import MtnSandbox

FLUTTERWAVE_SECRET_HASH = "test-flutterwave-secret-hash"

# A valid collect() call; tests override what they are about.
GOOD: dict[str, Any] = {
    "provider": "MTN_CAMEROON",
    "amount": Decimal("5000"),
    "currency": "XAF",
    "phone_number": "670000000",
    "order_id": "order-1",
    "user_id": "u-1",
}

AMQP_URL = os.environ.get("KUNPAY_TEST_AMQP_URL", "amqp://guest:guest@localhost:5672/")
POSTGRES_URL = os.environ.get("KUNPAY_TEST_POSTGRES_URL")
WORKER_START_TIMEOUT = 30.0

# Fast tiers so a payment settles in about a second; the lease must outlive the HTTP timeout.
WORKER_ENV = {
    "KUNPAY_POLL__DELAYS": "[0.2, 0.4, 0.8, 1.6]",
    "KUNPAY_COMMAND_RETRY_DELAYS": "[0.2, 0.5, 1]",
    "KUNPAY_HTTP__TOTAL_TIMEOUT": "2",
    "KUNPAY_HTTP__CONNECT_TIMEOUT": "1",
    "KUNPAY_SEND_LEASE": "3",
    "KUNPAY_OUTBOX_SWEEP_INTERVAL": "0.2",
    "KUNPAY_LOG_FORMAT": "json",
    "KUNPAY_LOG_LEVEL": "INFO",
    "KUNPAY_SHUTDOWN_GRACE": "5",
    "KUNPAY_PROVIDERS": json.dumps(
        {
            "MTN_CAMEROON": "MTN_MOMO",
            "ORANGE_CAMEROON": "ORANGE_MP",
            "PAWAPAY": "PAWAPAY",
            "FLUTTERWAVE": "FLUTTERWAVE",
        }
    ),
    "KUNPAY_PAWAPAY__API_TOKEN": "test-pawapay-token",
    "KUNPAY_FLUTTERWAVE__SECRET_KEY": "FLWSECK_TEST-0123456789abcdef-X",
    "KUNPAY_FLUTTERWAVE__CUSTOMER_EMAIL": "payments@example.com",
    "KUNPAY_ORANGE_MP__CLIENT_ID": "test-orange-client",
    "KUNPAY_ORANGE_MP__CLIENT_SECRET": "test-orange-secret",
    "KUNPAY_ORANGE_MP__X_AUTH_TOKEN": "test-orange-x-auth",
    "KUNPAY_ORANGE_MP__CHANNEL_USER_MSISDN": "691234567",
    "KUNPAY_ORANGE_MP__PIN": "2222",
    "KUNPAY_ORANGE_MP__RETRY_WAIT": "1",
    "KUNPAY_FLUTTERWAVE__WEBHOOK_SECRET_HASH": "test-flutterwave-secret-hash",
    "KUNPAY_PAWAPAY__VERIFY_CALLBACKS": "true",
    "KUNPAY_SERVER__COALESCE_WINDOW": "1",
    "KUNPAY_JANITOR__SWEEP_INTERVAL": "0.5",
    "KUNPAY_JANITOR__GRACE": "0.5",
    "KUNPAY_JANITOR__LEASE": "5",
    "KUNPAY_MTN_MOMO__CURRENCIES": '["XAF"]',
    "KUNPAY_MTN_MOMO__COLLECTION__SUBSCRIPTION_KEY": "test-subscription-key",
    "KUNPAY_MTN_MOMO__COLLECTION__API_USER": "8f2c9a51-0d3e-4e21-9b7a-2c5d6e7f8a90",
    "KUNPAY_MTN_MOMO__COLLECTION__API_KEY": "test-api-key",
    "KUNPAY_MTN_MOMO__DISBURSEMENT__SUBSCRIPTION_KEY": "test-disbursement-key",
    "KUNPAY_MTN_MOMO__DISBURSEMENT__API_USER": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
    "KUNPAY_MTN_MOMO__DISBURSEMENT__API_KEY": "test-disbursement-api-key",
    "KUNPAY_POLL__LATE_DELAYS": "[0.8, 1.6]",
    # The tests' app (the broker user guest) pays out too.
    "KUNPAY_APPS": json.dumps({"guest": {"payouts": True}}),
}


async def run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode()}")
    return out.decode()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Wait for a condition nothing announces (a sandbox's state, a row), with a deadline."""
    async with asyncio.timeout(timeout):
        while not await condition():  # noqa: ASYNC110 - nothing announces these: look again
            await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- broker ------------------------------------------------------------------------------------


async def create_vhost() -> tuple[str, str]:
    """A fresh vhost for guest; returns (name, amqp url)."""
    name = f"kunpay-test-{uuid.uuid4().hex[:12]}"
    await run("rabbitmqctl", "-q", "add_vhost", name)
    await run("rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    parts = urlsplit(AMQP_URL)
    return name, urlunsplit(parts._replace(path="/" + quote(name, safe="")))


async def delete_vhost(name: str) -> None:
    await run("rabbitmqctl", "-q", "delete_vhost", name)


# -- databases ---------------------------------------------------------------------------------


class Database:
    def __init__(self, kind: str, url: str, cleanup: Callable[[], Any]) -> None:
        self.kind = kind
        self.url = url
        self._cleanup = cleanup

    @classmethod
    async def create(cls, kind: str, tmp: Path) -> Database:
        if kind == "sqlite":
            path = tmp / f"kunpay-{uuid.uuid4().hex[:8]}.sqlite3"
            return cls(kind, f"sqlite://{path}", lambda: None)
        if not POSTGRES_URL:
            raise RuntimeError(
                "KUNPAY_TEST_POSTGRES_URL is not set: run the suite with `make test`, which "
                "starts a private PostgreSQL, or point it at a server you own"
            )
        name = f"kunpay_test_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

        async def drop() -> None:
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        parts = urlsplit(POSTGRES_URL)
        return cls(kind, urlunsplit(parts._replace(path="/" + name)), drop)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Read-only queries for assertions; ``$1`` placeholders for both databases."""
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.url)
            try:
                return [dict(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()
        path = self.url.removeprefix("sqlite://")

        def query() -> list[dict[str, Any]]:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.row_factory = sqlite3.Row
                rows = conn.execute(sql.replace("$1", "?").replace("$2", "?"), args).fetchall()
                return [dict(r) for r in rows]

        return await asyncio.to_thread(query)

    async def drop(self) -> None:
        result = self._cleanup()
        if asyncio.iscoroutine(result):
            await result


# -- worker processes --------------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            text = raw.decode(errors="replace").strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except ValueError:
                record = {"event": text, "level": "raw"}
            async with self._changed:
                self.lines.append(record)
                self._changed.notify_all()
        async with self._changed:
            self.lines.append({"event": "<exited>", "level": "eof"})
            self._changed.notify_all()

    async def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        """The first log record matching ``predicate`` (already written or still to come)."""
        found: dict[str, Any] | None = None

        def match() -> bool:
            nonlocal found
            found = next((r for r in self.lines if predicate(r)), None)
            return found is not None or any(r.get("level") == "eof" for r in self.lines)

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(match)
        except TimeoutError:
            raise AssertionError(f"no matching log line in {timeout}s:\n{self.tail()}") from None
        if found is None:
            raise AssertionError(f"worker exited first:\n{self.tail()}")
        return found

    def tail(self, n: int = 40) -> str:
        return "\n".join(json.dumps(r) for r in self.lines[-n:])

    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.lines if r.get("level") in ("error", "critical", "raw")]

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no acks, connections dropped."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader

    async def stop(self, timeout: float = 20) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code


# -- the stack ---------------------------------------------------------------------------------


class Stack:
    """One isolated kunpay: vhost, database, in-process sandbox, and worker processes."""

    def __init__(self, db: Database, vhost: str, amqp_url: str) -> None:
        self.db = db
        self.vhost = vhost
        self.amqp_url = amqp_url
        self.workers: list[WorkerProcess] = []
        self.sandbox_url = ""
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.mtn: MtnSandbox
        self.simulators: dict[str, Simulator] = {}
        self.http_port = 0
        self.extra_env: dict[str, str] = {}

    @classmethod
    async def create(
        cls,
        kind: str,
        tmp: Path,
        *,
        settle_seconds: float = 0.2,
        faults: Faults | None = None,
        **worker_env: str,
    ) -> Stack:
        db = await Database.create(kind, tmp)
        vhost, url = await create_vhost()
        stack = cls(db, vhost, url)
        # The sandbox's port is bound first, so the worker's cannot be the same one.
        sandbox_socket = socket.socket()
        sandbox_socket.bind(("127.0.0.1", 0))
        stack.http_port = free_port()
        stack.extra_env = worker_env
        callbacks = f"http://127.0.0.1:{stack.http_port}"
        app = build_app(
            SandboxConfig(
                settle_seconds=settle_seconds,
                slow_seconds=4,
                late_seconds=1.0,
                balance="1000000",
                pawapay_callback_url=f"{callbacks}/payments/pawapay/webhook/",
                pawapay_sign_callbacks=True,
                flutterwave_webhook_url=f"{callbacks}/payments/flutterwave/webhook/",
                flutterwave_secret_hash=FLUTTERWAVE_SECRET_HASH,
            ),
            faults,
        )
        stack.app = app
        stack.mtn = app[MTN_KEY]
        stack.simulators = app[SIMULATORS_KEY]
        stack._runner = web.AppRunner(app, access_log=None)
        await stack._runner.setup()
        await web.SockSite(stack._runner, sandbox_socket).start()
        port = stack._runner.addresses[0][1]
        stack.sandbox_url = f"http://127.0.0.1:{port}"
        await stack.migrate()
        return stack

    @property
    def env(self) -> dict[str, str]:
        return {
            **WORKER_ENV,
            "KUNPAY_AMQP_URL": self.amqp_url,
            "KUNPAY_DATABASE_URL": self.db.url,
            "KUNPAY_MTN_MOMO__BASE_URL": self.sandbox_url,
            "KUNPAY_PAWAPAY__BASE_URL": self.sandbox_url,
            "KUNPAY_FLUTTERWAVE__BASE_URL": self.sandbox_url,
            "KUNPAY_ORANGE_MP__BASE_URL": self.sandbox_url,
            "KUNPAY_SERVER__HOST": "127.0.0.1",
            "KUNPAY_SERVER__PORT": str(self.http_port),
            "KUNPAY_PUBLIC_BASE_URL": f"http://127.0.0.1:{self.http_port}",
            **self.extra_env,
        }

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def migrate(self) -> None:
        await run(sys.executable, "-m", "kunpay_worker.cli", "migrate", env=self.env)

    async def start_worker(self, **extra_env: str) -> WorkerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kunpay_worker.cli",
            "run",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env, **extra_env},
        )
        worker = WorkerProcess(proc)
        self.workers.append(worker)
        await worker.wait_log(lambda r: r.get("event") == "worker ready", WORKER_START_TIMEOUT)
        return worker

    async def cli(self, *args: str) -> str:
        """Run ``kunpay-worker`` against this stack (its database and broker)."""
        return await run(sys.executable, "-m", "kunpay_worker.cli", *args, env=self.env)

    async def client(self) -> KunPayClient:
        return await KunPayClient.connect(self.amqp_url)

    async def close(self) -> None:
        for simulator in self.simulators.values():
            simulator.release()
        for worker in self.workers:
            if worker.proc.returncode is None:
                await worker.kill()
        if self._runner is not None:
            await self._runner.cleanup()
        await delete_vhost(self.vhost)
        await self.db.drop()


class EventLog:
    """Every event a subscription received, awaitable by predicate."""

    def __init__(self, client: KunPayClient) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        self._subscription = client.events(queue=f"test-{uuid.uuid4().hex[:8]}")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> EventLog:
        await self._subscription.start()
        self._task = asyncio.create_task(self._listen())
        return self

    async def _listen(self) -> None:
        try:
            async for event in self._subscription:
                async with event.process(reraise=True), self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()  # waiters see that nothing more comes

    def check_listening(self) -> None:
        """Raise if the subscription ended (it must outlive broker restarts)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            raise AssertionError(f"the subscription ended: {self._task.exception()!r}")

    def of(self, transaction_id: uuid.UUID) -> list[Event]:
        return [e for e in self.events if e.transaction and e.transaction.id == transaction_id]

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 15) -> Event:
        found: Event | None = None

        def match() -> bool:
            nonlocal found
            found = next((e for e in self.events if predicate(e)), None)
            if found is None:
                self.check_listening()
            return found is not None

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(match)
        except TimeoutError:
            seen = [(e.type, e.transaction and e.transaction.status) for e in self.events]
            raise AssertionError(f"no matching event in {timeout}s; saw {seen}") from None
        assert found is not None
        return found

    async def final(self, transaction_id: uuid.UUID, timeout: float = 15) -> Event:
        return await self.wait_for(
            lambda e: (
                e.is_final and e.transaction is not None and e.transaction.id == transaction_id
            ),
            timeout,
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._subscription.close()
