"""What every simulated provider shares: simulated payments that settle over time, counters
per reference, held replies, callbacks."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from kunpay_worker.sandbox.faults import Faults
from kunpay_worker.sandbox.scenarios import Behaviour, Scenario

__all__ = ["Kind", "Outcome", "SandboxConfig", "SimPayment", "Simulator"]

log = structlog.get_logger("kunpay.sandbox")


@dataclass(frozen=True)
class SandboxConfig:
    # A payment settles (SUCCESSFUL/FAILED) this long after it was registered.
    settle_seconds: float = 1.0
    # The SLOW scenario answers after this long (beyond the worker's provider timeout).
    slow_seconds: float = 60.0
    # The LATE_SUCCESS scenario turns SUCCESSFUL this long after it was registered.
    late_seconds: float = 5.0
    # MTN sends callbacks as PUT or POST: both exist in the wild.
    callback_method: str = "PUT"
    # The merchant's payout balance, per provider account.
    balance: str = "10000000"
    # Providers that call back a URL configured on the account rather than per request.
    pawapay_callback_url: str | None = None
    # The bearer token the PawaPay simulator requires (None: any token).
    pawapay_api_token: str | None = None
    # Sign PawaPay callbacks (RFC 9421) with the simulator's own key, published on
    # GET /v2/public-key/http, as PawaPay does when signed callbacks are enabled.
    pawapay_sign_callbacks: bool = False
    flutterwave_webhook_url: str | None = None
    # Flutterwave's dashboard "secret hash": sent as verif-hash and used for
    # flutterwave-signature (HMAC-SHA256 of the body, base64).
    flutterwave_secret_hash: str = "sandbox-secret-hash"  # noqa: S105 - a sandbox value
    # Every provider API answer waits this long (a provider's own latency; benchmarks).
    latency_seconds: float = 0.0


class Kind(StrEnum):
    COLLECTION = "collection"
    PAYOUT = "payout"
    REFUND = "refund"


class Outcome(StrEnum):
    PENDING = "PENDING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"


@dataclass
class SimPayment:
    """A money movement the simulated provider registered."""

    reference: str
    kind: Kind
    amount: str
    currency: str
    msisdn: str
    scenario: Scenario
    created: float
    callback_url: str | None = None
    original: str | None = None  # refunds: the reference of what they refund
    provider_id: str = field(default_factory=lambda: str(secrets.randbelow(10**9) + 10**9))
    # LATE_SUCCESS applies only to the first payment from a number.
    late: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Simulator:
    """Base of one provider's simulator: ``payments`` by reference and the counters tests and
    benchmarks read to prove nothing was charged twice."""

    name = "SIMULATOR"

    def __init__(self, config: SandboxConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.payments: dict[str, SimPayment] = {}
        # Every money request received per reference (including refused and duplicate ones).
        self.requests: Counter[str] = Counter()
        # Money movements registered per reference: more than one is a double charge.
        self.initiations: Counter[str] = Counter()
        self.lookups: Counter[str] = Counter()
        self._numbers_seen: Counter[str] = Counter()
        self._release = asyncio.Event()
        self.held = 0
        self._held_changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        # Injected faults (set by build_app); callbacks read their copies and jitter here.
        self.faults: Faults | None = None

    # -- registering and settling ------------------------------------------------------------

    def register(
        self,
        reference: str,
        *,
        kind: Kind,
        amount: str,
        currency: str,
        msisdn: str,
        scenario: Scenario,
        callback_url: str | None = None,
        original: str | None = None,
        callback: Callable[[SimPayment], tuple[str, Any]] | None = None,
    ) -> SimPayment:
        """Record a movement; with ``callback`` (method, body) it is called back once settled."""
        self._numbers_seen[msisdn[-9:]] += 1
        payment = SimPayment(
            reference=reference,
            kind=kind,
            amount=amount,
            currency=currency,
            msisdn=msisdn,
            scenario=scenario,
            created=self.clock(),
            callback_url=callback_url,
            original=original,
            late=scenario.behaviour is Behaviour.LATE_SUCCESS
            and self._numbers_seen[msisdn[-9:]] == 1,
        )
        self.payments[reference] = payment
        self.initiations[reference] += 1
        if callback_url and callback is not None and scenario.behaviour is not Behaviour.PENDING:
            loop = asyncio.get_running_loop()
            loop.call_later(self.config.settle_seconds, self._spawn_callback, payment, callback)
        return payment

    def outcome(self, payment: SimPayment) -> tuple[Outcome, str | None]:
        """Where a registered movement stands now: (outcome, generic failure or None)."""
        age = self.clock() - payment.created
        behaviour = payment.scenario.behaviour
        if age < self.config.settle_seconds or behaviour is Behaviour.PENDING:
            return Outcome.PENDING, None
        if payment.late:
            if age < self.config.late_seconds:
                return Outcome.FAILED, payment.scenario.failure
            return Outcome.SUCCESSFUL, None
        if behaviour is Behaviour.FAIL:
            failure = payment.scenario.failure
            if payment.kind is Kind.PAYOUT and failure == "PAYER_NOT_FOUND":
                failure = "PAYEE_NOT_FOUND"
            return Outcome.FAILED, failure
        if payment.kind is Kind.REFUND and payment.original in self.payments:
            refunded = self.payments[payment.original].scenario
            if refunded.behaviour is Behaviour.REFUND_FAILS:
                return Outcome.FAILED, refunded.failure
        return Outcome.SUCCESSFUL, None

    # -- scenarios around the answer ---------------------------------------------------------

    def error_before_register(self, reference: str, scenario: Scenario) -> int | None:
        """An HTTP status to answer *instead of* registering (500, 429), or None."""
        behaviour = scenario.behaviour
        if behaviour is Behaviour.ERROR_ALWAYS:
            return 500
        if behaviour is Behaviour.ERROR_ONCE and self.requests[reference] == 1:
            return 500
        if behaviour is Behaviour.THROTTLE_ONCE and self.requests[reference] == 1:
            return 429
        return None

    async def delay_answer(self, scenario: Scenario) -> int | None:
        """After registering: hold or slow the answer; a status to answer instead (500)."""
        if scenario.behaviour is Behaviour.HOLD:
            await self._hold()
        elif scenario.behaviour is Behaviour.SLOW:
            await asyncio.sleep(self.config.slow_seconds)
        elif scenario.behaviour is Behaviour.ERROR_AFTER_ACCEPT:
            return 500
        return None

    async def _hold(self) -> None:
        async with self._held_changed:
            self.held += 1
            self._held_changed.notify_all()
        try:
            await self._release.wait()
        finally:
            async with self._held_changed:
                self.held -= 1
                self._held_changed.notify_all()

    def release(self) -> None:
        """Answer every held request (and any that arrives later, until re-armed)."""
        self._release.set()

    def hold_again(self) -> None:
        self._release = asyncio.Event()

    async def wait_held(self, count: int) -> None:
        async with self._held_changed:
            await self._held_changed.wait_for(lambda: self.held >= count)

    def counts(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "initiations": dict(self.initiations),
            "lookups": dict(self.lookups),
            "held": self.held,
        }

    def control_routes(self, prefix: str) -> list[web.RouteDef]:
        async def counts(_request: web.Request) -> web.Response:
            return web.json_response(self.counts())

        async def release(_request: web.Request) -> web.Response:
            held = self.held
            self.release()
            return web.json_response({"released": held})

        return [web.get(f"{prefix}/requests", counts), web.post(f"{prefix}/release", release)]

    # -- callbacks ---------------------------------------------------------------------------

    def _spawn_callback(
        self, payment: SimPayment, callback: Callable[[SimPayment], tuple[str, Any]]
    ) -> None:
        delays = self.faults.callback_delays() if self.faults is not None else [0.0]
        for delay in delays:
            task = asyncio.create_task(self._callback(payment, callback, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _callback(
        self,
        payment: SimPayment,
        callback: Callable[[SimPayment], tuple[str, Any]],
        delay: float = 0.0,
    ) -> None:
        assert payment.callback_url is not None  # noqa: S101 - checked by register()
        if delay:
            await asyncio.sleep(delay)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10, connect=5)
            )
        method, body = callback(payment)
        try:
            async with self._session.request(method, payment.callback_url, json=body) as resp:
                log.info(
                    "callback sent",
                    provider=self.name,
                    reference=payment.reference,
                    status=resp.status,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Providers' retry policies differ; the sandbox calls back once.
            log.info(
                "callback failed", provider=self.name, reference=payment.reference, error=repr(exc)
            )

    async def close(self) -> None:
        self.release()
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()


def json_error(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)
