"""Orange Money Cameroon merchant payment ("mp") client: collections only.

A collection is two calls. ``prepare`` asks ``mp/init`` for a payToken, which the engine commits
before ``send`` posts ``mp/pay`` with it; the payToken is then the lookup key
(``mp/paymentstatus/{payToken}``). Orange does not de-duplicate: a second init + pay for the same
order is a second charge, so a pay with an unknown outcome is never sent again (DESIGN.md §5).
Every call carries the OAuth bearer token and the merchant's static X-AUTH-TOKEN.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self

import aiohttp
from pydantic import ValidationError

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.providers.base import (
    AttemptRecorder,
    BackendBase,
    Capability,
    Lookup,
    MoneyRequest,
    SendReceipt,
    SendResult,
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
from kunpay_worker.providers.http import (
    HttpResponse,
    ProviderHttp,
    TokenCache,
    error_for,
    retry_after,
)
from kunpay_worker.providers.orange_mp.transformers import (
    InitAnswer,
    PaymentAnswer,
    TokenResponse,
    UnknownStatus,
    code_reason,
    failure_code,
    lookup_from_payment,
    orange_msisdn,
    order_id_for,
    pay_body,
    pay_refusal,
)
from kunpay_worker.settings import OrangeMpSettings, Settings

__all__ = ["OrangeMpClient"]

NAME = "ORANGE_MP"
_ENV = "KUNPAY_ORANGE_MP__"
# The settings a collection cannot do without, by their environment variable.
_REQUIRED = ("client_id", "client_secret", "x_auth_token", "channel_user_msisdn", "pin")


@dataclass(frozen=True, slots=True)
class _Credentials:
    client_id: str
    client_secret: str
    x_auth_token: str
    merchant: str  # the channel user's number, as Orange takes it
    pin: str


def _missing(settings: OrangeMpSettings) -> list[str]:
    return [f"{_ENV}{field.upper()}" for field in _REQUIRED if not getattr(settings, field)]


class OrangeMpClient(BackendBase):
    name: ClassVar[str] = NAME
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.COLLECT})
    operators: ClassVar[frozenset[str]] = frozenset({"ORANGE"})
    dedupes_by_reference: ClassVar[bool] = False
    needs_prepare: ClassVar[bool] = True

    def __init__(
        self,
        settings: OrangeMpSettings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        order_id_max_length: int | None = None,
    ) -> None:
        self._settings = settings
        self._http = ProviderHttp(
            NAME, session, base_url=settings.base_url, timeout=timeout, recorder=recorder
        )
        self._tokens = TokenCache(margin=settings.token_refresh_margin, clock=clock)
        self._api = settings.api_path.rstrip("/")
        self._order_id_max_length = order_id_max_length

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None,
    ) -> Self:
        return cls(
            settings.orange_mp,
            session,
            timeout=timeout,
            recorder=recorder,
            order_id_max_length=settings.orange_mp.order_id_max_length,
        )

    @classmethod
    def configuration_problems(cls, settings: Settings) -> list[str]:
        configured = settings.orange_mp
        problems = []
        missing = _missing(configured)
        if missing:
            problems.append(f"ORANGE_MP credentials missing: {', '.join(missing)}")
        if configured.channel_user_msisdn:
            try:
                orange_msisdn(configured.channel_user_msisdn)
            except ValueError:
                problems.append(
                    f"{_ENV}CHANNEL_USER_MSISDN must be the merchant's Cameroon number "
                    "(nine digits, with or without 237)"
                )
        return problems

    @classmethod
    def currencies(cls, settings: Settings) -> list[str]:
        return settings.orange_mp.currencies

    # -- money operations --------------------------------------------------------------------

    async def prepare(self, request: MoneyRequest) -> str:
        """``mp/init`` → the payToken. Init charges nothing, so whatever goes wrong here is
        ProviderNotReached: a new init is always safe."""
        _only_collections(request)
        credentials = self._credentials()
        _payer(request, credentials)  # a payment Orange would refuse needs no payToken
        try:
            response = await self._call(
                credentials,
                "POST",
                "/mp/init",
                operation="init",
                transaction_id=request.transaction_id,
            )
        except ProviderNotReached:
            raise
        except ProviderUnavailable as exc:
            raise ProviderNotReached(
                f"Orange init failed, nothing charged: {exc}",
                provider=NAME,
                reference=request.reference,
            ) from exc
        if response.status != 200:
            error = self._error(response, request.reference)
            if isinstance(error, ProviderNotReached):
                raise error
            raise ProviderNotReached(
                f"Orange init answered {response.status}, nothing charged",
                provider=NAME,
                http_status=response.status,
                provider_code=error.provider_code,
                reference=request.reference,
            )
        try:
            return InitAnswer.model_validate_json(response.body).data.payToken
        except ValidationError as exc:
            raise ProviderNotReached(
                f"Orange init answer has no payToken, nothing charged: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            ) from exc

    async def send(self, request: MoneyRequest) -> SendReceipt:
        """``mp/pay`` with the payToken from prepare(). Never repeated after an unknown outcome
        (the engine's rule for backends that do not de-duplicate)."""
        _only_collections(request)
        if request.handle is None:
            raise ValueError("an Orange payment is sent with the payToken from prepare()")
        credentials = self._credentials()
        payer = _payer(request, credentials)
        body = pay_body(
            subscriber=payer,
            merchant=credentials.merchant,
            amount=request.amount,
            currency=request.currency,
            order_id=order_id_for(request.reference, self._order_id_max_length),
            message=request.message,
            pin=credentials.pin,
            pay_token=request.handle,
            callback_url=request.callback_url,
        )
        response = await self._call(
            credentials,
            "POST",
            "/mp/pay",
            operation="pay",
            transaction_id=request.transaction_id,
            json_body=body.model_dump(),
            sends_money=True,
        )
        if response.status != 200:
            raise self._error(response, request.reference, sends_money=True)
        try:
            answer = PaymentAnswer.model_validate_json(response.body)
            reason = pay_refusal(answer)
        except (ValidationError, UnknownStatus) as exc:
            raise ProviderResponseInvalid(
                f"unreadable Orange pay answer, outcome unknown: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            ) from exc
        if reason is not None:
            raise ProviderRefused(
                f"Orange refused the payment ({failure_code(answer) or reason})",
                provider=NAME,
                http_status=response.status,
                provider_code=reason,
                reference=request.reference,
            )
        return SendReceipt(SendResult.ACCEPTED, handle=request.handle)

    async def lookup(self, request: MoneyRequest) -> Lookup:
        """``mp/paymentstatus/{payToken}``. Without a payToken Orange never heard of it."""
        if request.handle is None:
            return Lookup(found=False)
        response = await self._call(
            self._credentials(),
            "GET",
            f"/mp/paymentstatus/{request.handle}",
            operation="payment_status",
            transaction_id=request.transaction_id,
        )
        if response.status == 404:
            return Lookup(found=False)
        if response.status != 200:
            raise self._error(response, request.reference)
        try:
            lookup = lookup_from_payment(PaymentAnswer.model_validate_json(response.body))
        except (ValidationError, UnknownStatus) as exc:
            raise ProviderResponseInvalid(
                f"unreadable Orange payment status: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            ) from exc
        if lookup.found and lookup.handle is None:
            # Some answers (an expired payToken) leave every field but the status empty.
            return replace(lookup, handle=request.handle)
        return lookup

    # -- HTTP --------------------------------------------------------------------------------

    def _error(
        self, response: HttpResponse, reference: str | None, *, sends_money: bool = False
    ) -> ProviderError:
        # A refused debit is a 417 with inittxnstatus; a spent or unknown payToken another 4xx.
        answer = _answer(response)
        return error_for(
            NAME,
            "Orange",
            response,
            reference=reference,
            code=failure_code(answer),
            sends_money=sends_money,
            refused_code=code_reason(answer),
        )

    def _credentials(self) -> _Credentials:
        configured = self._settings
        missing = _missing(configured)
        if (
            missing
            or configured.client_id is None
            or configured.client_secret is None
            or configured.x_auth_token is None
            or configured.channel_user_msisdn is None
            or configured.pin is None
        ):
            raise ProviderAuthFailed(
                f"ORANGE_MP credentials missing: {', '.join(missing)}", provider=NAME
            )
        try:
            merchant = orange_msisdn(configured.channel_user_msisdn)
        except ValueError as exc:
            raise ProviderAuthFailed(
                f"{_ENV}CHANNEL_USER_MSISDN is not a Cameroon number", provider=NAME
            ) from exc
        return _Credentials(
            client_id=configured.client_id,
            client_secret=configured.client_secret.get_secret_value(),
            x_auth_token=configured.x_auth_token.get_secret_value(),
            merchant=merchant,
            pin=configured.pin.get_secret_value(),
        )

    async def _call(
        self,
        credentials: _Credentials,
        method: str,
        path: str,
        *,
        operation: str,
        transaction_id: str | None,
        json_body: dict[str, Any] | None = None,
        sends_money: bool = False,
    ) -> HttpResponse:
        for attempt in (1, 2):
            token = await self._tokens.get(lambda: self._fetch_token(credentials))
            response = await self._http.request(
                method,
                self._api + path,
                operation=operation,
                transaction_id=transaction_id,
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-AUTH-TOKEN": credentials.x_auth_token,
                    "Accept": "application/json",
                },
                json_body=json_body,
                sends_money=sends_money,
            )
            if response.status == 401 and attempt == 1:
                # The token may have been revoked early: drop it and refresh once.
                self._tokens.invalidate(token)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_token(self, credentials: _Credentials) -> tuple[str, float]:
        basic = base64.b64encode(
            f"{credentials.client_id}:{credentials.client_secret}".encode()
        ).decode()
        try:
            response = await self._http.request(
                "POST",
                self._settings.token_path,
                operation="token",
                transaction_id=None,
                headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                form={"grant_type": "client_credentials"},
            )
        except ProviderUnavailable as exc:
            # No money request left: whatever happened to the token call, nothing was sent.
            raise ProviderNotReached(
                f"could not get an Orange token: {exc}", provider=NAME
            ) from exc
        if response.status in (400, 401, 403):
            # WSO2 answers invalid_client with 400 or 401 depending on the version.
            raise ProviderAuthFailed(
                "Orange refused the client id/secret", provider=NAME, http_status=response.status
            )
        if response.status == 429:
            raise ProviderThrottled(
                "Orange throttled the token request",
                retry_after=retry_after(response.headers),
                provider=NAME,
                http_status=429,
            )
        if response.status != 200:
            raise ProviderNotReached(
                f"Orange token endpoint answered {response.status}",
                provider=NAME,
                http_status=response.status,
            )
        try:
            parsed = TokenResponse.model_validate_json(response.body)
        except ValidationError as exc:
            raise ProviderNotReached(
                f"unreadable Orange token answer: {exc}", provider=NAME, http_status=200
            ) from exc
        return parsed.access_token, parsed.expires_in


def _only_collections(request: MoneyRequest) -> None:
    if request.kind is not TransactionType.COLLECTION:
        raise ValueError(f"{NAME} only collects; it cannot do a {request.kind}")


def _payer(request: MoneyRequest, credentials: _Credentials) -> str:
    """The payer's number as Orange takes it; refused before any HTTP when Orange would."""
    try:
        payer = orange_msisdn(request.msisdn)
    except ValueError as exc:
        raise ProviderRefused(
            f"Orange cannot debit this number: {exc}",
            provider=NAME,
            provider_code="INVALID_PHONE_NUMBER",
            reference=request.reference,
        ) from exc
    if payer == credentials.merchant:
        raise ProviderRefused(
            "the payer's number is the merchant's own Orange Money number",
            provider=NAME,
            provider_code="PAYER_IS_MERCHANT",
            reference=request.reference,
        )
    return payer


def _answer(response: HttpResponse) -> PaymentAnswer | None:
    try:
        return PaymentAnswer.model_validate_json(response.body)
    except ValidationError:
        return None
