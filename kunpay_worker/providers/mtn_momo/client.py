"""MTN MoMo Open API client: tokens, request to pay, status lookup.

One ``aiohttp.ClientSession`` for the worker is passed in; every call carries an explicit
``ClientTimeout``. aiohttp errors are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import aiohttp
from pydantic import ValidationError

from kunpay_worker.providers.base import (
    AttemptRecord,
    AttemptRecorder,
    CollectionRequest,
    Lookup,
    SendResult,
    mask_payload,
    mask_text,
)
from kunpay_worker.providers.errors import (
    ProviderAuthFailed,
    ProviderError,
    ProviderNotReached,
    ProviderRefused,
    ProviderResponseInvalid,
    ProviderThrottled,
    ProviderUnavailable,
)
from kunpay_worker.providers.mtn_momo.transformers import (
    ErrorBody,
    RequestToPayStatus,
    TokenResponse,
    UnknownStatus,
    lookup_from_status,
    request_to_pay_body,
)
from kunpay_worker.settings import MtnMomoSettings, MtnProduct, Settings

__all__ = ["MtnMomoClient"]

NAME = "MTN_MOMO"
MAX_BODY_LOGGED = 4000


@dataclass(frozen=True, slots=True)
class _Credentials:
    subscription_key: str
    api_user: str
    api_key: str


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class _TokenCache:
    """One product's token: reused until shortly before expiry, one refresh at a time."""

    def __init__(self) -> None:
        self.token: _Token | None = None
        self.lock = asyncio.Lock()


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    headers: Mapping[str, str]


class MtnMomoClient:
    name: ClassVar[str] = NAME
    capabilities: ClassVar[frozenset[str]] = frozenset({"collect"})
    dedupes_by_reference: ClassVar[bool] = True

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None,
    ) -> Self:
        return cls(settings.mtn_momo, session, timeout=timeout, recorder=recorder)

    @classmethod
    def configuration_problems(cls, settings: Settings) -> list[str]:
        missing = settings.mtn_momo.collection.missing()
        if not missing:
            return []
        names = ", ".join(f"KUNPAY_MTN_MOMO__COLLECTION__{m.upper()}" for m in missing)
        return [f"MTN_MOMO collection credentials missing: {names}"]

    @classmethod
    def currencies(cls, settings: Settings) -> list[str]:
        return settings.mtn_momo.currencies

    def __init__(
        self,
        settings: MtnMomoSettings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout.total is None:
            raise ValueError("provider calls need a total timeout")
        self._settings = settings
        self._session = session
        self._timeout = timeout
        self._recorder = recorder
        self._clock = clock
        self._base = settings.base_url.rstrip("/")
        self._tokens: dict[str, _TokenCache] = {}

    def _credentials(self, product: str) -> _Credentials:
        configured: MtnProduct = getattr(self._settings, product)
        if (
            configured.subscription_key is None
            or configured.api_user is None
            or configured.api_key is None
        ):
            raise ProviderAuthFailed(
                f"MTN MoMo {product} credentials missing: {', '.join(configured.missing())} "
                f"(KUNPAY_MTN_MOMO__{product.upper()}__...)",
                provider=NAME,
            )
        return _Credentials(
            subscription_key=configured.subscription_key.get_secret_value(),
            api_user=configured.api_user,
            api_key=configured.api_key.get_secret_value(),
        )

    # -- money operations --------------------------------------------------------------------

    async def request_collection(self, request: CollectionRequest) -> SendResult:
        body = request_to_pay_body(
            amount=request.amount,
            currency=request.currency,
            msisdn=request.msisdn,
            external_id=request.transaction_id,
            message=request.message,
        )
        headers = {"X-Reference-Id": request.reference}
        if request.callback_url:
            headers["X-Callback-Url"] = request.callback_url
        response = await self._call(
            "collection",
            "POST",
            "/collection/v1_0/requesttopay",
            operation="request_to_pay",
            transaction_id=request.transaction_id,
            json_body=body.model_dump(),
            headers=headers,
            sends_money=True,
        )
        if response.status == 202:
            return SendResult.ACCEPTED
        if response.status == 409:
            # MTN already has this reference: the first send landed. Look it up for the status.
            return SendResult.DUPLICATE
        raise self._error(response, request.reference, sends_money=True)

    async def lookup_collection(self, reference: str, transaction_id: str | None) -> Lookup:
        response = await self._call(
            "collection",
            "GET",
            f"/collection/v1_0/requesttopay/{reference}",
            operation="request_to_pay_status",
            transaction_id=transaction_id,
        )
        if response.status == 404:
            return Lookup(found=False)
        if response.status != 200:
            raise self._error(response, reference, sends_money=False)
        try:
            return lookup_from_status(RequestToPayStatus.model_validate_json(response.body))
        except (ValidationError, UnknownStatus) as exc:
            raise ProviderResponseInvalid(
                f"unreadable request-to-pay status: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=reference,
            ) from exc

    # -- HTTP --------------------------------------------------------------------------------

    def _error(self, response: _Response, reference: str, *, sends_money: bool) -> ProviderError:
        code = _error_code(response.body)
        kwargs: dict[str, Any] = {
            "provider": NAME,
            "http_status": response.status,
            "provider_code": code,
            "reference": reference,
        }
        status = response.status
        if status == 429:
            return ProviderThrottled(
                "MTN MoMo throttled the request",
                retry_after=_retry_after(response.headers),
                **kwargs,
            )
        if status in (401, 403):
            return ProviderAuthFailed("MTN MoMo refused our credentials", **kwargs)
        if status >= 500:
            return ProviderUnavailable(f"MTN MoMo answered {status}", **kwargs)
        if sends_money and 400 <= status < 500:
            return ProviderRefused(f"MTN MoMo refused the request ({code or status})", **kwargs)
        return ProviderResponseInvalid(f"unexpected MTN MoMo answer {status}", **kwargs)

    async def _call(
        self,
        product: str,
        method: str,
        path: str,
        *,
        operation: str,
        transaction_id: str | None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        sends_money: bool = False,
    ) -> _Response:
        credentials = self._credentials(product)
        for attempt in (1, 2):
            token = await self._token(product, credentials)
            all_headers = {
                "Authorization": f"Bearer {token}",
                "Ocp-Apim-Subscription-Key": credentials.subscription_key,
                "X-Target-Environment": self._settings.target_environment,
                **(headers or {}),
            }
            response = await self._send(
                method,
                path,
                headers=all_headers,
                json_body=json_body,
                operation=operation,
                transaction_id=transaction_id,
                sends_money=sends_money,
            )
            if response.status == 401 and attempt == 1:
                # The token may have been revoked early: drop it and refresh once.
                self._invalidate(product, token)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _token(self, product: str, credentials: _Credentials) -> str:
        cache = self._tokens.setdefault(product, _TokenCache())
        token = cache.token
        if token is not None and token.expires_at > self._clock():
            return token.value
        async with cache.lock:
            token = cache.token
            if token is not None and token.expires_at > self._clock():
                return token.value  # another task refreshed it while we waited
            cache.token = await self._fetch_token(product, credentials)
            return cache.token.value

    def _invalidate(self, product: str, token: str) -> None:
        cache = self._tokens.get(product)
        if cache is not None and cache.token is not None and cache.token.value == token:
            cache.token = None

    async def _fetch_token(self, product: str, credentials: _Credentials) -> _Token:
        basic = base64.b64encode(f"{credentials.api_user}:{credentials.api_key}".encode()).decode()
        try:
            response = await self._send(
                "POST",
                f"/{product}/token/",
                headers={
                    "Authorization": f"Basic {basic}",
                    "Ocp-Apim-Subscription-Key": credentials.subscription_key,
                },
                json_body=None,
                operation="token",
                transaction_id=None,
                sends_money=False,
            )
        except ProviderUnavailable as exc:
            # No money request left: whatever happened to the token call, nothing was sent.
            raise ProviderNotReached(
                f"could not get an MTN MoMo token: {exc}", provider=NAME
            ) from exc
        if response.status in (401, 403):
            raise ProviderAuthFailed(
                "MTN MoMo refused the API user/key", provider=NAME, http_status=response.status
            )
        if response.status != 200:
            raise ProviderNotReached(
                f"MTN MoMo token endpoint answered {response.status}",
                provider=NAME,
                http_status=response.status,
                provider_code=_error_code(response.body),
            )
        try:
            parsed = TokenResponse.model_validate_json(response.body)
        except ValidationError as exc:
            raise ProviderNotReached(
                f"unreadable MTN MoMo token answer: {exc}", provider=NAME, http_status=200
            ) from exc
        lifetime = max(parsed.expires_in - self._settings.token_refresh_margin, 0.0)
        return _Token(parsed.access_token, self._clock() + lifetime)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        json_body: dict[str, Any] | None,
        operation: str,
        transaction_id: str | None,
        sends_money: bool,
    ) -> _Response:
        url = self._base + path
        started = time.perf_counter()
        status: int | None = None
        raw: bytes | None = None
        error: str | None = None
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                json=json_body,
                timeout=self._timeout,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                return _Response(status, raw, resp.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise ProviderNotReached(
                f"could not connect to MTN MoMo ({error})", provider=NAME
            ) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            what = "outcome unknown" if sends_money else "no answer"
            raise ProviderUnavailable(
                f"MTN MoMo call failed, {what} ({error})", provider=NAME
            ) from exc
        finally:
            if self._recorder is not None:
                await self._recorder(
                    AttemptRecord(
                        backend=NAME,
                        operation=operation,
                        method=method,
                        url=path,
                        transaction_id=transaction_id,
                        request_body=mask_payload(json_body) if json_body else None,
                        response_status=status,
                        response_body=_masked_text(raw),
                        error=error,
                        duration_ms=round((time.perf_counter() - started) * 1000),
                    )
                )


def _error_code(body: bytes) -> str | None:
    try:
        parsed = ErrorBody.model_validate_json(body)
    except ValidationError:
        return None
    return parsed.code


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = int(value.strip())
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return max(seconds, 0)


def _masked_text(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return mask_text(raw[:MAX_BODY_LOGGED].decode("utf-8", "replace"))
    return json.dumps(mask_payload(parsed))[:MAX_BODY_LOGGED]
