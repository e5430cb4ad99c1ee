"""The one place provider HTTP happens: explicit timeouts, aiohttp errors translated, every
exchange recorded (masked) for the provider_attempts table."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kunpay_worker.metrics import PROVIDER_CALL_SECONDS, PROVIDER_CALLS, PROVIDER_CALLS_SKIPPED
from kunpay_worker.providers.base import AttemptRecord, AttemptRecorder, mask_payload, mask_text
from kunpay_worker.providers.errors import (
    ProviderAuthFailed,
    ProviderCircuitOpen,
    ProviderError,
    ProviderNotReached,
    ProviderRefused,
    ProviderResponseInvalid,
    ProviderThrottled,
    ProviderUnavailable,
)

__all__ = [
    "CircuitBreaker",
    "HttpResponse",
    "ProviderHttp",
    "TokenCache",
    "error_for",
    "retry_after",
]

MAX_BODY_LOGGED = 4000


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class ProviderHttp:
    """Requests to one provider over the worker's shared session."""

    def __init__(
        self,
        provider: str,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None,
    ) -> None:
        if timeout.total is None:
            raise ValueError("provider calls need a total timeout")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._timeout = timeout
        self._recorder = recorder
        self._slots: asyncio.Semaphore | None = None
        self._max_concurrent = 0
        self._slot_wait = 0.0
        self.breaker: CircuitBreaker | None = None

    def limit(
        self, *, max_concurrent: int, slot_wait: float, breaker: CircuitBreaker | None
    ) -> None:
        """At most ``max_concurrent`` calls in flight; a call that waits ``slot_wait`` seconds
        for its turn fails as not sent (ProviderNotReached). ``breaker`` stops calls to a failing
        provider."""
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_concurrent = max_concurrent
        self._slot_wait = slot_wait
        self.breaker = breaker

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        transaction_id: str | None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        raw_body: bytes | None = None,
        sends_money: bool = False,
    ) -> HttpResponse:
        """One HTTP exchange. Raises ProviderNotReached when the connection could not be made
        (nothing was sent; also while the circuit is open), ProviderUnavailable for anything after
        that (timeout, reset)."""
        if self._slots is not None:
            try:
                async with asyncio.timeout(self._slot_wait):
                    await self._slots.acquire()
            except TimeoutError:
                PROVIDER_CALLS_SKIPPED.labels(self.provider, "no_slot").inc()
                # Nothing was sent: the caller may try again later, safely.
                raise ProviderThrottled(
                    f"{self.provider}: all {self._max_concurrent} call slots stayed busy for "
                    f"{self._slot_wait:g}s; not sent",
                    provider=self.provider,
                ) from None
        try:
            if self.breaker is not None:
                try:
                    self.breaker.before_call()
                except ProviderCircuitOpen:
                    PROVIDER_CALLS_SKIPPED.labels(self.provider, "circuit_open").inc()
                    raise
            return await self._request(
                method, path, operation=operation, transaction_id=transaction_id,
                headers=headers, json_body=json_body, form=form, params=params,
                raw_body=raw_body, sends_money=sends_money,
            )  # fmt: skip
        finally:
            if self._slots is not None:
                self._slots.release()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        transaction_id: str | None,
        headers: Mapping[str, str] | None,
        json_body: Any,
        form: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        raw_body: bytes | None,
        sends_money: bool,
    ) -> HttpResponse:
        url = path if path.startswith("http") else self.base_url + path
        started = time.perf_counter()
        status: int | None = None
        raw: bytes | None = None
        error: str | None = None
        outcome = "error"  # the metrics label; stays "error" when cancelled mid-call
        try:
            async with self._session.request(
                method,
                url,
                headers=dict(headers or {}),
                json=json_body if raw_body is None and form is None else None,
                data=raw_body if raw_body is not None else form,
                params=params,
                timeout=self._timeout,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                outcome = str(status)
                if self.breaker is not None:
                    self.breaker.record(ok=status < 500)
                return HttpResponse(status, raw, resp.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            outcome = _failure_label(exc)
            error = f"{type(exc).__name__}: {exc}"
            if self.breaker is not None:
                self.breaker.record(ok=False)
            raise ProviderNotReached(
                f"could not connect to {self.provider} ({error})", provider=self.provider
            ) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            outcome = _failure_label(exc)
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self.breaker is not None:
                self.breaker.record(ok=False)
            what = "outcome unknown" if sends_money else "no answer"
            raise ProviderUnavailable(
                f"{self.provider} call failed, {what} ({error})", provider=self.provider
            ) from exc
        finally:
            elapsed = time.perf_counter() - started
            PROVIDER_CALLS.labels(self.provider, operation, outcome).inc()
            PROVIDER_CALL_SECONDS.labels(self.provider, operation).observe(elapsed)
            if self._recorder is not None:
                logged: Any = json_body
                if form is not None:
                    logged = dict(form)
                elif raw_body is not None:
                    logged = _parsed(raw_body)
                await self._recorder(
                    AttemptRecord(
                        backend=self.provider,
                        operation=operation,
                        method=method,
                        url=url.removeprefix(self.base_url),
                        transaction_id=transaction_id,
                        request_body=mask_payload(logged) if logged is not None else None,
                        response_status=status,
                        response_body=_masked_text(raw),
                        error=error,
                        duration_ms=round(elapsed * 1000),
                    )
                )


def _failure_label(exc: BaseException) -> str:
    """The ``status`` label of a provider call that got no answer."""
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts, the connect timeout included
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError):  # refused, reset, disconnected
        return "connection_error"
    return "error"


class CircuitBreaker:
    """Stops calling a provider that keeps failing, and probes it again later.

    ``closed``: calls go through; ``failures`` calls in a row without a usable answer open it.
    ``open``: calls fail at once with ProviderCircuitOpen (nothing is sent) until ``cooldown``
    has passed; then ``half-open``: one probe call goes through, and its outcome closes or
    re-opens the circuit.
    """

    def __init__(
        self,
        provider: str,
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        # When the current probe started; a probe that never reports (cancelled mid-call) is
        # given up after a cooldown, so it cannot hold the circuit open for good.
        self._probe_since: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._paused_for() > 0:
            return "open"
        return "half-open"

    def _paused_for(self) -> float:
        """Seconds until a call may go through (0: now)."""
        now = self._clock()
        if self._opened_at is None:
            return 0.0
        if self._probe_since is not None:
            return max(self._probe_since + self._cooldown - now, 0.0)
        return max(self._opened_at + self._cooldown - now, 0.0)

    def before_call(self) -> None:
        if self._opened_at is None:
            return
        paused = self._paused_for()
        if paused > 0:
            raise ProviderCircuitOpen(
                f"{self.provider} is failing; calls paused (circuit open)",
                provider=self.provider,
                retry_after=max(paused, 1.0),
            )
        self._probe_since = self._clock()  # half-open: this call is the probe

    def record(self, *, ok: bool) -> None:
        if ok:
            self._failures = 0
            self._opened_at = None
        else:
            self._failures += 1
            if self._probe_since is not None or self._failures >= self._threshold:
                self._opened_at = self._clock()
        self._probe_since = None


class TokenCache:
    """One OAuth-style token: reused until shortly before expiry, one refresh at a time.

    ``fetch`` returns (token, lifetime in seconds); the cache subtracts ``margin``.
    """

    def __init__(self, *, margin: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._margin = margin
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, fetch: Callable[[], Awaitable[tuple[str, float]]]) -> str:
        if self._token is not None and self._expires_at > self._clock():
            return self._token
        async with self._lock:
            if self._token is not None and self._expires_at > self._clock():
                return self._token  # another task refreshed it while we waited
            token, lifetime = await fetch()
            self._token = token
            self._expires_at = self._clock() + max(lifetime - self._margin, 0.0)
            return token

    def invalidate(self, token: str) -> None:
        """Drop ``token`` (answered 401), unless a newer one already replaced it."""
        if self._token == token:
            self._token = None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header; None when absent or an HTTP date."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = int(value.strip())
    except ValueError:
        return None
    return max(seconds, 0)


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:MAX_BODY_LOGGED].decode("utf-8", "replace")


def _masked_text(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return mask_text(raw[:MAX_BODY_LOGGED].decode("utf-8", "replace"))
    return mask_text(json.dumps(mask_payload(parsed)))[:MAX_BODY_LOGGED]


def error_for(
    provider: str,
    label: str,
    response: HttpResponse,
    *,
    reference: str | None,
    code: str | None,
    sends_money: bool,
    refused: bool | None = None,
    refused_code: str | None = None,
) -> ProviderError:
    """The error an unsuccessful answer means, the same ladder for every provider:

    429 → ProviderThrottled (with Retry-After); 401/403 → ProviderAuthFailed; 5xx →
    ProviderUnavailable (a money request's outcome is unknown); a money request refused (4xx, or
    ``refused`` when the provider says no otherwise) → ProviderRefused carrying ``refused_code``
    (default ``code``); anything else → ProviderResponseInvalid. ``label`` names the provider in
    messages."""
    status = response.status
    kwargs: dict[str, Any] = {
        "provider": provider,
        "http_status": status,
        "provider_code": code,
        "reference": reference,
    }
    if status == 429:
        return ProviderThrottled(
            f"{label} throttled the request", retry_after=retry_after(response.headers), **kwargs
        )
    if status in (401, 403):
        return ProviderAuthFailed(f"{label} refused our credentials ({code or status})", **kwargs)
    if status >= 500:
        return ProviderUnavailable(f"{label} answered {status}", **kwargs)
    if sends_money and (400 <= status < 500 if refused is None else refused):
        kwargs["provider_code"] = refused_code or code or f"HTTP_{status}"
        return ProviderRefused(f"{label} refused the request ({code or status})", **kwargs)
    return ProviderResponseInvalid(f"unexpected {label} answer {status}", **kwargs)
