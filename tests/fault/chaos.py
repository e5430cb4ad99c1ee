"""The fault suite's machinery: a mixed payment load driven through the public SDK while faults
are injected, and the reliability contract (DESIGN.md §6) checked afterwards against three
independent witnesses: the sandbox (what was charged), the database (what kunpay recorded) and
a subscriber (what kunpay announced).

A scenario is ``Run.start()`` → load and faults concurrently → ``Run.settle()`` →
``Run.check()``, which returns a :class:`Report` whose violation counts must all be zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kunpay_sdk import (
    Accepted,
    BrokerError,
    CommandUnroutable,
    Event,
    KunPayClient,
    OutcomeUnknown,
    Status,
)
from kunpay_worker.sandbox.common import Kind, Outcome
from kunpay_worker.sandbox.scenarios import Behaviour, scenario_for
from tests.integration.harness import EventLog, Stack, WorkerProcess, until

# (provider key, operation, national number prefix) the load picks from: every backend collects,
# MTN and PawaPay pay out.
COLLECT_ON = [
    ("MTN_CAMEROON", "6700000"),
    ("PAWAPAY", "6700000"),
    ("FLUTTERWAVE", "6700000"),
    ("ORANGE_CAMEROON", "6900000"),
]
PAYOUT_ON = [("MTN_CAMEROON", "6700000"), ("PAWAPAY", "6900000")]
REFUNDABLE = {"MTN_CAMEROON", "PAWAPAY", "FLUTTERWAVE"}
# Magic-number suffixes and their weights (see kunpay_worker/sandbox/scenarios.py).
NUMBERS: list[tuple[str, int]] = [
    ("00", 40),  # succeeds
    ("12", 10),  # unlisted: succeeds
    ("02", 8),  # fails NOT_ENOUGH_FUNDS
    ("01", 4),  # fails PAYER_NOT_FOUND
    ("04", 3),  # fails EXPIRED
    ("20", 5),  # 500 first, then accepted
    ("21", 5),  # accepted, but answered 500
    ("23", 5),  # 429 first
    ("30", 3),  # accepted, the answer held (until released)
    ("31", 3),  # accepted, the answer comes after the worker's timeout
    ("10", 2),  # stays PENDING forever
    ("50", 6),  # succeeds; refunds of it fail
]
SUBMIT_DEADLINE = 120.0  # a caller keeps retrying a command with its key this long


@dataclass
class Issued:
    """One command the load submitted (and retried with the same key until confirmed)."""

    operation: str
    provider: str
    number: str
    key: str
    transaction_id: uuid.UUID | None = None
    confirmed: bool = False
    attempts: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def stays_pending(self) -> bool:
        return scenario_for(self.number).behaviour is Behaviour.PENDING


@dataclass
class Report:
    """One scenario's figures; every count under VIOLATIONS must be zero."""

    scenario: str
    database: str
    payments: int = 0  # confirmed commands
    injected: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    double_charges: int = 0
    missing_events: int = 0
    wrong_states: int = 0
    forged_accepted: int = 0
    hangs: int = 0
    worker_errors: int = 0
    duplicates_delivered: int = 0
    publish_retries: int = 0
    reconciliation: int = 0  # finals kunpay flagged for a human (allowed, reported)
    recover_seconds: float = 0.0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    VIOLATIONS = (
        "lost",
        "double_charges",
        "missing_events",
        "wrong_states",
        "forged_accepted",
        "hangs",
        "worker_errors",
    )

    def violations(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.VIOLATIONS if getattr(self, name)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "database": self.database,
            "payments": self.payments,
            "injected": self.injected,
            **{name: getattr(self, name) for name in self.VIOLATIONS},
            "duplicates_delivered": self.duplicates_delivered,
            "publish_retries": self.publish_retries,
            "reconciliation": self.reconciliation,
            "recover_seconds": round(self.recover_seconds, 2),
            "seconds": round(self.seconds, 2),
            "details": self.details[:50],
        }


class Run:
    """A scenario's stack, load, subscriber and bookkeeping."""

    def __init__(self, stack: Stack, scenario: str, *, seed: int = 0) -> None:
        self.stack = stack
        self.rng = random.Random(seed)
        self.report = Report(scenario, stack.db.kind)
        self.issued: list[Issued] = []
        self.injected: Counter[str] = Counter()
        self.client: KunPayClient
        self.events: EventLog
        self.workers: list[WorkerProcess] = []
        self.retired: list[WorkerProcess] = []  # killed or stopped: their logs still count
        self.forged: list[uuid.UUID] = []  # transactions forged callbacks claimed succeeded
        self._started = 0.0
        self.last_fault = 0.0

    # -- set-up ------------------------------------------------------------------------------

    async def start(self, workers: int = 1) -> Run:
        self._started = time.monotonic()
        for _ in range(workers):
            self.workers.append(await self.stack.start_worker())
        self.client = await self.stack.client()
        self.events = await EventLog(self.client).start()
        return self

    def fault(self, name: str, count: int = 1) -> None:
        self.injected[name] += count
        self.last_fault = time.monotonic()

    async def restart_worker(self, index: int = 0, *, kill: bool = True) -> None:
        """SIGKILL (or SIGTERM) worker ``index`` and start a replacement."""
        old = self.workers[index]
        if kill:
            await old.kill()
            self.fault("worker_kill")
        else:
            await old.stop()
            self.fault("worker_sigterm")
        self.retired.append(old)
        self.workers[index] = await self.stack.start_worker()

    # -- load --------------------------------------------------------------------------------

    def _number(self, prefix: str) -> str:
        suffixes, weights = zip(*NUMBERS, strict=True)
        return prefix + self.rng.choices(suffixes, weights)[0]

    async def submit(
        self, issued: Issued, call: Callable[[], Awaitable[Accepted]]
    ) -> Issued | None:
        """Call until confirmed, retrying with the same key as a careful caller would. Every call
        must return or raise within the SDK's publish timeout (plus slack): else it hung."""
        self.issued.append(issued)
        deadline = time.monotonic() + SUBMIT_DEADLINE
        bound = self.client.publish_timeout + 5
        while time.monotonic() < deadline:
            issued.attempts += 1
            try:
                async with asyncio.timeout(bound):
                    accepted = await call()
            except TimeoutError:
                self.report.hangs += 1
                self.report.details.append(f"{issued.key}: call hung over {bound}s")
                return None
            except CommandUnroutable as exc:
                issued.errors[type(exc).__name__] += 1
                self.report.details.append(f"{issued.key}: unroutable: {exc}")
                return None
            except (OutcomeUnknown, BrokerError, ConnectionError) as exc:
                issued.errors[type(exc).__name__] += 1
                self.report.publish_retries += 1
                await asyncio.sleep(0.5)
                continue
            if issued.transaction_id is not None and accepted.transaction_id != (
                issued.transaction_id
            ):
                self.report.details.append(f"{issued.key}: a retry gave another transaction")
                self.report.lost += 1
            issued.transaction_id = accepted.transaction_id
            issued.confirmed = True
            return issued
        self.report.details.append(f"{issued.key}: never confirmed in {SUBMIT_DEADLINE}s")
        return None

    async def payment(self, i: int) -> Issued | None:
        payout = self.rng.random() < 0.2
        provider, prefix = self.rng.choice(PAYOUT_ON if payout else COLLECT_ON)
        number = self._number(prefix)
        operation = "disburse" if payout else "collect"
        issued = Issued(operation, provider, number, f"{self.report.scenario}-{i}")
        method = self.client.disburse if payout else self.client.collect
        amount = Decimal(self.rng.choice(["500", "1000", "2500", "5000", "12000"]))
        return await self.submit(
            issued,
            lambda: method(
                provider=provider,
                amount=amount,
                currency="XAF",
                phone_number=number,
                order_id=issued.key,
                user_id=f"user-{i % 17}",
                idempotency_key=issued.key,
            ),
        )

    async def refund(self, original: Issued, i: int) -> Issued | None:
        assert original.transaction_id is not None
        tx = original.transaction_id
        partial = self.rng.random() < 0.5
        issued = Issued("refund", original.provider, original.number, f"{original.key}-refund")
        amount = Decimal("100") if partial else None
        return await self.submit(
            issued,
            lambda: self.client.refund(tx, amount, idempotency_key=issued.key),
        )

    async def load(
        self, count: int, *, rate: float = 12.0, concurrency: int = 12, refunds: float = 0.25
    ) -> None:
        """``count`` payments offered at ``rate`` per second (so the faults land while they
        flow), then refunds of about ``refunds`` of the collections that succeed."""
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            await asyncio.sleep(i / rate)
            async with gate:
                issued = await self.payment(i)
            if issued is None or issued.operation != "collect" or issued.provider not in REFUNDABLE:
                return
            if issued.stays_pending or self.rng.random() >= refunds:
                return
            assert issued.transaction_id is not None
            final = await self._final(issued.transaction_id, 90)
            if final is None or final.type.value != "payment.succeeded":
                return
            async with gate:
                await self.refund(issued, i)

        await asyncio.gather(*(one(i) for i in range(count)))

    async def _final(self, tx: uuid.UUID, timeout: float) -> Event | None:
        try:
            return await self.events.final(tx, timeout)
        except AssertionError:
            return None

    # -- settling and checking -----------------------------------------------------------------

    async def settle(self, timeout: float = 120) -> None:
        """Wait (bounded) until every confirmed command has its final event, or stays PENDING
        where the sandbox keeps it so."""
        deadline = time.monotonic() + timeout
        for issued in self.issued:
            if not issued.confirmed or issued.stays_pending:
                continue
            assert issued.transaction_id is not None
            left = max(0.1, deadline - time.monotonic())
            await self._final(issued.transaction_id, left)

        # Events of payments that stay pending are not waited for above: wait (bounded) until
        # the outbox has published every event it holds.
        async def published() -> bool:
            rows = await self.stack.db.fetch(
                "SELECT count(*) AS n FROM outbox WHERE kind = 'EVENT'"
            )
            return int(rows[0]["n"]) == 0

        with contextlib.suppress(TimeoutError):
            await until(published, max(1.0, deadline - time.monotonic()))
        self.report.recover_seconds = time.monotonic() - (self.last_fault or self._started)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.events.close()
        with contextlib.suppress(Exception):
            await self.client.close()

    async def check(self) -> Report:
        """Count every violation of the contract; the report says which payment broke what."""
        report = self.report
        report.seconds = time.monotonic() - self._started
        report.injected = {**dict(self.injected), **self._sandbox_faults()}
        confirmed = [i for i in self.issued if i.confirmed]
        report.payments = len(confirmed)
        db = self.stack.db
        rows = {
            str(r["id"]): r
            for r in await db.fetch(
                "SELECT id, status, provider_reference, provider_transaction_id, "
                "provider_handle, needs_reconciliation, idempotency_key, type, initiation, "
                "send_attempts, poll_count, next_poll_at, stale FROM transactions"
            )
        }
        statuses = await db.fetch(
            "SELECT transaction_id, status, event_id FROM transaction_statuses"
        )
        dead = await db.fetch("SELECT body FROM dead_letters")
        try:
            self.events.check_listening()
        except AssertionError as exc:
            report.details.insert(0, f"test subscriber: {exc}")
        backlog = await db.fetch("SELECT count(*) AS n FROM outbox")
        if backlog[0]["n"]:
            report.details.append(f"outbox backlog at the end: {backlog[0]['n']} rows")
        self._check_lost(confirmed, rows, dead)
        self._check_charges(rows)
        self._check_events(statuses)
        self._check_states(rows)
        errors = [r for w in (*self.retired, *self.workers) for r in w.errors()]
        report.worker_errors = len(errors)
        report.details += [
            f"worker error: {r.get('event')!s:.200} {str(r.get('exception') or '')[-700:]}"
            for r in errors[:10]
        ]
        return report

    def _check_lost(
        self,
        confirmed: list[Issued],
        rows: dict[str, dict[str, Any]],
        dead: list[dict[str, Any]],
    ) -> None:
        report = self.report
        keys = Counter(r["idempotency_key"] for r in rows.values())
        for issued in confirmed:
            tx = str(issued.transaction_id)
            row = rows.get(tx)
            if keys[issued.key] > 1:
                report.lost += 1
                report.details.append(f"{issued.key}: {keys[issued.key]} transactions for one key")
            if row is None:
                report.lost += 1
                report.details.append(f"{issued.key}: confirmed, no transaction {tx}")
                continue
            status = Status(row["status"])
            if status is Status.PENDING and not issued.stays_pending:
                report.lost += 1
                report.details.append(
                    f"{issued.key}: {issued.provider} {issued.number} {tx} still PENDING: "
                    + self._diagnose(row)
                )
            elif status is Status.REJECTED:
                report.lost += 1
                report.details.append(f"{issued.key}: a valid command was REJECTED")
            final = [e for e in self.events.of(uuid.UUID(tx)) if e.is_final]
            if status is not Status.PENDING and not final:
                report.lost += 1
                report.details.append(f"{issued.key}: {status} but no final event")
        ours = {str(i.transaction_id) for i in confirmed}
        for letter in dead:
            body = bytes(letter["body"]) if letter["body"] is not None else b""
            if any(tx.encode() in body for tx in ours):
                report.lost += 1
                report.details.append(f"a confirmed command is in the dead letters: {body[:200]!r}")

    def _diagnose(self, row: dict[str, Any]) -> str:
        """What the row and the sandbox say about a payment that did not settle."""
        fields = ("initiation", "send_attempts", "poll_count", "next_poll_at", "stale")
        said = ", ".join(f"{f}={row.get(f)}" for f in fields)
        reference = str(row["provider_reference"])
        for name, sim in self.stack.simulators.items():
            if reference in sim.payments or sim.requests[reference]:
                outcome = (
                    sim.outcome(sim.payments[reference])[0] if reference in sim.payments else None
                )
                said += (
                    f"; {name}: requests={sim.requests[reference]} "
                    f"lookups={sim.lookups[reference]} outcome={outcome}"
                )
        lines = [
            f"{r.get('event')}" + (f"({r.get('error') or r.get('result') or ''})")
            for w in (*self.retired, *self.workers)
            for r in w.lines
            if r.get("transaction_id") == str(row["id"])
            and r.get("event") != "janitor rescheduled a check"
        ]
        return said + "; log: " + " | ".join(lines[:12])

    def _check_charges(self, rows: dict[str, dict[str, Any]]) -> None:
        """At most one money movement per provider reference, each one known to kunpay;
        Flutterwave and Orange never asked twice for one payment."""
        report = self.report
        known = {
            str(v)
            for r in rows.values()
            for v in (r["provider_reference"], r["provider_transaction_id"], r["provider_handle"])
            if v is not None
        }
        for name, sim in self.stack.simulators.items():
            for reference, count in sim.initiations.items():
                if count > 1:
                    report.double_charges += count - 1
                    report.details.append(f"{name} {reference}: {count} initiations")
            for reference, payment in sim.payments.items():
                if reference not in known and payment.provider_id not in known:
                    report.double_charges += 1
                    report.details.append(f"{name} {reference}: a movement kunpay does not know")
            refunded = {
                p.original
                for p in sim.payments.values()
                if p.kind is Kind.REFUND and p.original is not None
            }
            for original in refunded:
                total = sum(
                    (
                        Decimal(p.amount)
                        for p in sim.payments.values()
                        if p.kind is Kind.REFUND
                        and p.original == original
                        and sim.outcome(p)[0] is Outcome.SUCCESSFUL
                    ),
                    Decimal(0),
                )
                if original in sim.payments and total > Decimal(sim.payments[original].amount):
                    report.double_charges += 1
                    report.details.append(f"{name} {original}: refunded {total}, more than paid")

    def _check_events(self, statuses: list[dict[str, Any]]) -> None:
        report = self.report
        delivered = Counter(e.event_id for e in self.events.events)
        report.duplicates_delivered = sum(n - 1 for n in delivered.values() if n > 1)
        for row in statuses:
            event_id = row["event_id"]
            if event_id is None:
                continue  # a status without an event of its own (e.g. a manual note)
            if uuid.UUID(str(event_id)) not in delivered:
                report.missing_events += 1
                report.details.append(
                    f"no event {event_id} for {row['transaction_id']} -> {row['status']}"
                )

    def _check_states(self, rows: dict[str, dict[str, Any]]) -> None:
        """kunpay's final state agrees with the provider's (the sandbox's) truth."""
        report = self.report
        by_reference: dict[str, tuple[str, Outcome]] = {}
        for name, sim in self.stack.simulators.items():
            for reference, payment in sim.payments.items():
                by_reference[reference] = (name, sim.outcome(payment)[0])
        for tx, row in rows.items():
            status = Status(row["status"])
            if row["needs_reconciliation"]:
                report.reconciliation += 1
                continue  # flagged for a human: kunpay says it does not know
            truth = by_reference.get(str(row["provider_reference"]))
            outcome = truth[1] if truth else None
            if status in (Status.COMPLETED, Status.REFUNDED, Status.REFUND_FAILED):
                ok = outcome is Outcome.SUCCESSFUL
            elif status is Status.FAILED:
                ok = outcome in (None, Outcome.FAILED)
            elif status is Status.PENDING:
                ok = outcome in (None, Outcome.PENDING)
            else:
                ok = True
            if not ok:
                report.wrong_states += 1
                report.details.append(f"{tx}: kunpay {status}, provider {outcome}")
                if uuid.UUID(tx) in self.forged:
                    report.forged_accepted += 1

    def _sandbox_faults(self) -> dict[str, int]:
        from kunpay_worker.sandbox.app import FAULTS_KEY

        if self.stack.app is None:
            return {}
        return dict(self.stack.app[FAULTS_KEY].injected)
