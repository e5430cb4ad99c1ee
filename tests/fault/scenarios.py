"""The fault scenarios of issue 6, each a bounded, self-stopping run on a real stack (RabbitMQ,
the database, the sandbox, worker processes; loopback only). Each returns the checked
:class:`~tests.fault.chaos.Report`; the pytest suite runs them small, ``make faults`` large.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from kunpay_sdk import Accepted, CommandUnroutable
from kunpay_sdk.errors import KunPayError
from kunpay_sdk.topology import COMMANDS_EXCHANGE, COMMANDS_QUEUE
from kunpay_worker.sandbox.faults import Faults
from kunpay_worker.sandbox.mtn_momo import MtnSandbox
from kunpay_worker.sandbox.orange_mp import OrangeMpSandbox
from kunpay_worker.sandbox.scenarios import Behaviour, scenario_for
from kunpay_worker.webhooks import PATHS
from tests.fault.chaos import Issued, Report, Run
from tests.integration.harness import Stack, run


@dataclass(frozen=True)
class Scale:
    """How big a run is: CI runs ``SMALL``; ``make faults`` runs ``LARGE``."""

    payments: int
    kills: int
    restarts: int

    @classmethod
    def named(cls, name: str) -> Scale:
        return {"small": SMALL, "large": LARGE}[name]


# Fault stacks run the tests' fast tiers and, after them, look again every 2 s instead of
# hourly: a payment whose last scheduled lookup met a fault settles within the run.
FAULT_ENV = {"KUNPAY_POLL__JANITOR_INTERVAL": "2"}


async def create_stack(kind: str, tmp: Path) -> Stack:
    """A stack for fault runs: FAULT_ENV, and Orange payTokens that expire in 5 s instead of
    7 min (an Orange payment whose pay was lost stays INITIATED until its payToken expires)."""
    stack = await Stack.create(kind, tmp, **FAULT_ENV)
    orange = stack.simulators["ORANGE_MP"]
    assert isinstance(orange, OrangeMpSandbox)
    orange.pay_token_ttl = 5.0
    return stack


SMALL = Scale(payments=60, kills=10, restarts=2)
LARGE = Scale(payments=400, kills=25, restarts=4)

Scenario = Callable[[Stack, Scale, int], Awaitable[Report]]


# -- 1. workers killed -----------------------------------------------------------------------------


async def worker_kills(stack: Stack, scale: Scale, seed: int) -> Report:
    """SIGKILL the worker at random moments, while the sandbox holds a reply, and right after a
    command was handled (between the provider's answer and the ack); restart it each time."""
    run = await Run(stack, "worker SIGKILLed", seed=seed).start()
    try:
        loading = asyncio.create_task(run.load(scale.payments))
        for k in range(scale.kills):
            moment = k % 3
            worker = run.workers[0]
            if moment == 0:
                await asyncio.sleep(run.rng.uniform(0.3, 1.5))
            elif moment == 1:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await stack.mtn.wait_held(1)
                run.fault("kill_while_reply_held")
            else:
                seen = {id(r) for r in worker.lines}
                with contextlib.suppress(AssertionError):
                    await worker.wait_log(
                        lambda r, seen=seen: (
                            id(r) not in seen and r.get("event") == "command handled"
                        ),
                        timeout=5,
                    )
                run.fault("kill_after_answer")
            await run.restart_worker()
            if moment == 1:
                _release_held(stack)
        await loading
        _release_held(stack, again=False)
        await run.settle()
        return await run.check()
    finally:
        await run.close()


def _release_held(stack: Stack, *, again: bool = True) -> None:
    for sim in stack.simulators.values():
        sim.release()
        if again:
            sim.hold_again()


# -- 2. RabbitMQ restarted, connections closed -----------------------------------------------------


async def rabbitmqctl(*args: str) -> None:
    await run("rabbitmqctl", "-q", *args, timeout=120)


async def broker_restart() -> None:
    await rabbitmqctl("stop_app")
    try:
        await asyncio.sleep(2)
    finally:
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup")


async def broker_faults(stack: Stack, scale: Scale, seed: int) -> Report:
    """``rabbitmqctl stop_app``/``start_app`` and ``close_all_connections`` while the SDK
    publishes and the worker consumes."""
    run = await Run(stack, "RabbitMQ restarted", seed=seed).start()
    try:
        loading = asyncio.create_task(run.load(scale.payments))
        for k in range(scale.restarts * 2):
            await asyncio.sleep(run.rng.uniform(0.5, 2.0))
            if k % 2 == 0:
                await broker_restart()
                run.fault("broker_restart")
            else:
                await rabbitmqctl("close_all_connections", "kunpay fault suite")
                run.fault("connections_closed")
        await loading
        await run.settle()
        return await run.check()
    finally:
        await run.close()


# -- 3. PostgreSQL restarted -----------------------------------------------------------------------


def _pg_ctl() -> str:
    """The newest installed PostgreSQL's pg_ctl (Debian keeps them off PATH)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    found = str(versions[0]) if versions else shutil.which("pg_ctl")
    if found is None:
        raise RuntimeError("pg_ctl not found")
    return found


async def postgres_restart() -> None:
    """Restart the test PostgreSQL (``make test`` says where it lives)."""
    data = os.environ.get("KUNPAY_TEST_PG_DIR")
    if not data:
        raise RuntimeError("KUNPAY_TEST_PG_DIR is not set: run the fault suite with `make test`")
    pg_ctl = _pg_ctl()
    # -l: the restarted server must not inherit our pipe (run() waits for it to close).
    log = f"{data}/server.log"
    command = [pg_ctl, "-D", data, "-l", log, "restart", "-m", "fast", "-w", "-t", "60"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    await run(*command, timeout=90)


async def postgres_faults(stack: Stack, scale: Scale, seed: int) -> Report:
    """PostgreSQL restarted (fast shutdown: every connection dropped) mid-run."""
    assert stack.db.kind == "postgres"
    run = await Run(stack, "PostgreSQL restarted", seed=seed).start()
    try:
        loading = asyncio.create_task(run.load(scale.payments))
        for _ in range(scale.restarts):
            await asyncio.sleep(run.rng.uniform(1.0, 2.5))
            await postgres_restart()
            run.fault("postgres_restart")
        await loading
        await run.settle()
        return await run.check()
    finally:
        await run.close()


# -- 4. provider faults ----------------------------------------------------------------------------

PROVIDER_FAULTS = {
    "error_rate": 0.08,
    "lost_answer_rate": 0.04,
    "lost_answer_seconds": 3.0,  # the tests' worker gives up after 2 s
    "malformed_rate": 0.04,
    "duplicate_answer_rate": 0.1,
    "callback_copies": 3,
    "callback_jitter": 0.6,
}


async def provider_faults(stack: Stack, scale: Scale, seed: int) -> Report:
    """5xx bursts, answers lost after the provider accepted, malformed JSON, duplicate-reference
    answers, tokens revoked mid-run, callbacks duplicated and reordered, and forged callbacks
    claiming success for payments the provider failed or still holds."""
    run = await Run(stack, "provider faults", seed=seed).start()
    assert stack.app is not None
    faults: Faults = stack.app[_faults_key()]
    try:
        faults.update({**PROVIDER_FAULTS, "seed": seed})
        loading = asyncio.create_task(run.load(scale.payments))
        forging = asyncio.create_task(_forge_callbacks(run, loading))
        for _ in range(scale.restarts):
            await asyncio.sleep(run.rng.uniform(1.0, 3.0))
            for sim in stack.simulators.values():
                if isinstance(sim, MtnSandbox | OrangeMpSandbox):
                    sim.revoke_tokens()
            run.fault("tokens_revoked")
            # a burst: every request fails for a moment
            faults.update({"error_rate": 1.0})
            await asyncio.sleep(0.5)
            faults.update({"error_rate": PROVIDER_FAULTS["error_rate"]})
            run.fault("5xx_burst")
        await loading
        await forging
        faults.clear()
        await run.settle()
        return await run.check()
    finally:
        faults.clear()
        await run.close()


def _faults_key() -> Any:
    from kunpay_worker.sandbox.app import FAULTS_KEY

    return FAULTS_KEY


async def _forge_callbacks(run: Run, loading: asyncio.Task[None]) -> None:
    """Forge "it succeeded" callbacks for payments the provider says failed or are pending:
    unsigned for MTN (which does not sign; kunpay checks with MTN), badly signed for PawaPay,
    with a wrong secret hash for Flutterwave, and a wrong notif_token for Orange."""
    stack = run.stack
    forged: set[str] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while not loading.done():
            rows = await stack.db.fetch(
                "SELECT id, backend, phone_number, provider_reference, type FROM transactions "
                "WHERE provider_reference IS NOT NULL"
            )
            for row in rows:
                tx = str(row["id"])
                behaviour = scenario_for(str(row["phone_number"])).behaviour
                if tx in forged or behaviour not in (Behaviour.FAIL, Behaviour.PENDING):
                    continue
                forged.add(tx)
                run.forged.append(uuid.UUID(tx))
                status = await _forge(session, stack, row)
                run.fault("forged_callback")
                if status >= 500:
                    run.report.details.append(f"forged callback answered {status}")
                    run.report.worker_errors += 1
            await asyncio.sleep(0.3)


async def _forge(session: aiohttp.ClientSession, stack: Stack, row: dict[str, Any]) -> int:
    reference = str(row["provider_reference"])
    backend = row["backend"]
    base = stack.http_url
    if backend == "MTN_MOMO":
        path = PATHS["MTN_DISBURSEMENT" if row["type"] == "PAYOUT" else "MTN_COLLECTION"]
        url, body, headers = (
            f"{base}{path}?reference={reference}",
            {"referenceId": reference, "status": "SUCCESSFUL", "financialTransactionId": "1"},
            {},
        )
    elif backend == "PAWAPAY":
        url = f"{base}{PATHS['PAWAPAY']}"
        body = {"depositId": reference, "payoutId": reference, "status": "COMPLETED"}
        headers = {
            "Signature-Input": 'sig-pp=("@method");keyid="forged"',
            "Signature": "sig-pp=:AA==:",
        }
    elif backend == "FLUTTERWAVE":
        url = f"{base}{PATHS['FLUTTERWAVE']}"
        body = {"event": "charge.completed", "data": {"tx_ref": reference, "status": "successful"}}
        headers = {"verif-hash": "forged-hash"}
    else:
        url = f"{base}{PATHS['ORANGE_MP']}?reference={reference}"
        body = {"status": "SUCCESSFULL", "notif_token": "forged", "txnid": "MP1"}
        headers = {}
    async with session.post(url, json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


# -- 5. publishing while the broker is down, and unroutable publishes ------------------------------


async def publishing_faults(stack: Stack, scale: Scale, seed: int) -> Report:
    """Commands published while RabbitMQ is stopped raise within the SDK's timeout (never hang);
    retried with the same key once it is back, each gives one transaction. A command no queue
    takes raises CommandUnroutable and is not silently dropped."""
    run = await Run(stack, "publishing, broker down", seed=seed).start()
    try:
        run.client.publish_timeout = 3.0
        calls = [_down_call(run, i) for i in range(max(5, scale.restarts * 3))]
        await rabbitmqctl("stop_app")
        run.fault("broker_down")
        try:
            raised = await asyncio.gather(*(_attempt_once(run, call) for _, call in calls))
        finally:
            await rabbitmqctl("start_app")
            await rabbitmqctl("await_startup")
        run.injected["raised_while_down"] += sum(raised)
        # The caller retries the same keys once the broker is back: one transaction each.
        await asyncio.gather(*(run.submit(issued, call) for issued, call in calls))
        await _unroutable(run)
        await run.load(scale.payments // 2)
        await run.settle()
        return await run.check()
    finally:
        await run.close()


def _down_call(run: Run, i: int) -> tuple[Issued, Callable[[], Awaitable[Accepted]]]:
    issued = Issued("collect", "MTN_CAMEROON", "670000000", f"broker-down-{i}")
    return issued, lambda: run.client.collect(
        provider="MTN_CAMEROON",
        amount=Decimal("1000"),
        currency="XAF",
        phone_number="670000000",
        order_id=issued.key,
        user_id="u",
        idempotency_key=issued.key,
    )


async def _attempt_once(run: Run, call: Callable[[], Awaitable[Accepted]]) -> int:
    """One call while the broker is down: 1 if it raised in time, 0 otherwise."""
    bound = run.client.publish_timeout + 5
    try:
        async with asyncio.timeout(bound):
            await call()
    except TimeoutError:
        run.report.hangs += 1
        run.report.details.append(f"collect() hung over {bound}s while the broker was down")
        return 0
    except (KunPayError, ConnectionError):
        return 1
    run.report.details.append("collect() was confirmed while the broker was stopped")
    return 0


async def _unroutable(run: Run) -> None:
    connection = await aio_pika.connect(run.stack.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(COMMANDS_QUEUE, ensure=False)
        await queue.unbind(COMMANDS_EXCHANGE, "collect")
        try:
            issued = Issued("collect", "MTN_CAMEROON", "670000000", "unroutable-1")
            try:
                await run.client.collect(
                    provider="MTN_CAMEROON",
                    amount=Decimal("1000"),
                    currency="XAF",
                    phone_number="670000000",
                    order_id=issued.key,
                    user_id="u",
                    idempotency_key=issued.key,
                )
            except CommandUnroutable:
                run.fault("unroutable_raised")
                seen = await run.stack.db.fetch(
                    "SELECT id FROM transactions WHERE idempotency_key = $1", issued.key
                )
                if seen:
                    run.report.details.append("an unroutable command was processed anyway")
                    run.report.lost += 1
            else:
                run.report.lost += 1
                run.report.details.append("an unroutable collect() returned as if queued")
        finally:
            await queue.bind(COMMANDS_EXCHANGE, "collect")
    # The caller retries the same key once the queue is back: one transaction.
    await run.submit(
        Issued("collect", "MTN_CAMEROON", "670000000", "unroutable-1"),
        lambda: run.client.collect(
            provider="MTN_CAMEROON",
            amount=Decimal("1000"),
            currency="XAF",
            phone_number="670000000",
            order_id="unroutable-1",
            user_id="u",
            idempotency_key="unroutable-1",
        ),
    )


SCENARIOS: dict[str, tuple[Scenario, tuple[str, ...]]] = {
    # name: (scenario, databases it runs on)
    "worker_kills": (worker_kills, ("sqlite", "postgres")),
    "broker_faults": (broker_faults, ("postgres",)),
    "postgres_faults": (postgres_faults, ("postgres",)),
    "provider_faults": (provider_faults, ("sqlite",)),
    "publishing_faults": (publishing_faults, ("sqlite",)),
}
