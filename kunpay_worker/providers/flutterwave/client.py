"""Flutterwave v3 client: francophone mobile money collections (``mobile_money_franco``) and
refunds of them, with the account's static secret key.

Flutterwave does not de-duplicate by ``tx_ref`` (nothing documents it), so a send whose outcome
is unknown is never repeated (DESIGN.md §5): the engine looks it up, by the transaction id when
the charge answer gave us one, else by ``tx_ref``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from pydantic import BaseModel, ValidationError

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
)
from kunpay_worker.providers.flutterwave.transformers import (
    Created,
    Envelope,
    Mismatch,
    RefundData,
    TransactionData,
    UnknownStatus,
    charge_body,
    error_code,
    is_not_found,
    lookup_from_refund,
    lookup_from_transaction,
    refund_body,
)
from kunpay_worker.providers.http import HttpResponse, ProviderHttp, error_for
from kunpay_worker.settings import FlutterwaveSettings, Settings

__all__ = ["FlutterwaveClient"]

NAME = "FLUTTERWAVE"
CHARGE_PATH = "/v3/charges?" + urlencode({"type": "mobile_money_franco"})
_M = TypeVar("_M", bound=BaseModel)


def _verify_path(transaction_id: str) -> str:
    return f"/v3/transactions/{quote(transaction_id, safe='')}/verify"


def _verify_by_reference_path(tx_ref: str) -> str:
    return "/v3/transactions/verify_by_reference?" + urlencode({"tx_ref": tx_ref})


def _transaction_id(value: str | None) -> str | None:
    """Flutterwave transaction ids are numbers; anything else (a flw_ref) is not one."""
    return value if value is not None and value.isdigit() else None


class FlutterwaveClient(BackendBase):
    name: ClassVar[str] = NAME
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.COLLECT, Capability.REFUND, Capability.PARTIAL_REFUND}
    )
    operators: ClassVar[frozenset[str]] = frozenset({"MTN", "ORANGE"})
    dedupes_by_reference: ClassVar[bool] = False
    needs_prepare: ClassVar[bool] = False

    def __init__(
        self,
        settings: FlutterwaveSettings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None = None,
    ) -> None:
        self._settings = settings
        self._http = ProviderHttp(
            NAME, session, base_url=settings.base_url, timeout=timeout, recorder=recorder
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None,
    ) -> Self:
        return cls(settings.flutterwave, session, timeout=timeout, recorder=recorder)

    @classmethod
    def configuration_problems(cls, settings: Settings) -> list[str]:
        configured = settings.flutterwave
        problems = []
        if not configured.secret_key or not configured.secret_key.get_secret_value():
            problems.append("FLUTTERWAVE secret key missing: KUNPAY_FLUTTERWAVE__SECRET_KEY")
        if not configured.customer_email:
            problems.append(
                "FLUTTERWAVE customer email missing: KUNPAY_FLUTTERWAVE__CUSTOMER_EMAIL "
                "(Flutterwave requires an email on every charge)"
            )
        return problems

    @classmethod
    def currencies(cls, settings: Settings) -> list[str]:
        return settings.flutterwave.currencies

    # -- money operations --------------------------------------------------------------------

    async def send(self, request: MoneyRequest) -> SendReceipt:
        if request.kind is TransactionType.COLLECTION:
            return await self._charge(request)
        if request.kind is TransactionType.REFUND:
            return await self._refund(request)
        raise ProviderRefused(
            f"Flutterwave cannot {request.kind} here",
            provider=NAME,
            provider_code="UNSUPPORTED",
            reference=request.reference,
        )

    async def lookup(self, request: MoneyRequest) -> Lookup:
        if request.kind is TransactionType.REFUND:
            return await self._refund_status(request)
        if request.kind is not TransactionType.COLLECTION:
            raise ValueError(f"Flutterwave has no {request.kind} to look up")
        if request.handle is not None:
            path, operation = _verify_path(request.handle), "verify"
        else:
            path, operation = _verify_by_reference_path(request.reference), "verify_by_reference"
        data = await self._fetch(path, operation, request, TransactionData)
        if data is None:
            return Lookup(found=False)
        try:
            return lookup_from_transaction(
                data, reference=request.reference, amount=request.amount, currency=request.currency
            )
        except (Mismatch, UnknownStatus) as exc:
            raise ProviderResponseInvalid(
                str(exc), provider=NAME, http_status=200, reference=request.reference
            ) from exc

    async def _charge(self, request: MoneyRequest) -> SendReceipt:
        email = self._settings.customer_email
        if not email:
            raise ProviderNotReached(
                "Flutterwave needs a customer email: set KUNPAY_FLUTTERWAVE__CUSTOMER_EMAIL",
                provider=NAME,
                reference=request.reference,
            )
        body = charge_body(
            tx_ref=request.reference,
            amount=request.amount,
            currency=request.currency,
            country=self._settings.country,
            email=email,
            msisdn=request.msisdn,
            network=self._settings.networks.get(request.operator),
        )
        response = await self._call(
            "POST",
            CHARGE_PATH,
            operation="charge",
            transaction_id=request.transaction_id,
            json_body=body.model_dump(exclude_none=True),
            sends_money=True,
        )
        created = self._created(response, request.reference)
        if created.tx_ref is not None and created.tx_ref != request.reference:
            raise ProviderResponseInvalid(
                f"Flutterwave answered for tx_ref {created.tx_ref!r}, not ours",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            )
        return SendReceipt(SendResult.ACCEPTED, handle=str(created.id))

    async def _refund(self, request: MoneyRequest) -> SendReceipt:
        original_id = await self._original_id(request)
        # The comment carries our reference, so a refund whose answer was lost can be found
        # in Flutterwave's dashboard by whoever reconciles it.
        body = refund_body(
            amount=request.amount,
            currency=request.currency,
            comments=f"kunpay refund {request.reference}",
        )
        response = await self._call(
            "POST",
            f"/v3/transactions/{quote(original_id, safe='')}/refund",
            operation="refund",
            transaction_id=request.transaction_id,
            json_body=body.model_dump(exclude_none=True),
            sends_money=True,
        )
        created = self._created(response, request.reference)
        return SendReceipt(SendResult.ACCEPTED, handle=str(created.id))

    async def _refund_status(self, request: MoneyRequest) -> Lookup:
        if request.handle is None:
            # Flutterwave knows a refund only by the id its answer gave us: without it a lost
            # answer cannot be looked up (the engine ends it as UNKNOWN_OUTCOME to reconcile).
            return Lookup(found=False)
        data = await self._fetch(
            f"/v3/refunds/{quote(request.handle, safe='')}", "refund_status", request, RefundData
        )
        if data is None:
            return Lookup(found=False)
        try:
            return lookup_from_refund(
                data, amount=request.amount, original_id=_transaction_id(request.original_handle)
            )
        except (Mismatch, UnknownStatus) as exc:
            raise ProviderResponseInvalid(
                str(exc), provider=NAME, http_status=200, reference=request.reference
            ) from exc

    async def _original_id(self, request: MoneyRequest) -> str:
        """The refunded charge's Flutterwave transaction id. When only its tx_ref is known (its
        charge answer was lost), one verify call finds it; nothing is sent if that fails."""
        known = _transaction_id(request.original_handle)
        if known is not None:
            return known
        if request.original_reference is None:
            raise ProviderRefused(
                "the refunded payment has neither a Flutterwave id nor a tx_ref",
                provider=NAME,
                provider_code="ORIGINAL_NOT_IDENTIFIED",
                reference=request.reference,
            )
        try:
            original = await self._fetch(
                _verify_by_reference_path(request.original_reference),
                "refund_original",
                request,
                TransactionData,
            )
        except ProviderNotReached:
            raise
        except ProviderError as exc:
            raise ProviderNotReached(
                f"could not identify the refunded payment: {exc}",
                provider=NAME,
                reference=request.reference,
            ) from exc
        if original is None:
            raise ProviderRefused(
                "Flutterwave does not know the refunded payment",
                provider=NAME,
                provider_code="ORIGINAL_NOT_FOUND",
                reference=request.reference,
            )
        if original.tx_ref != request.original_reference:
            raise ProviderNotReached(
                f"Flutterwave answered for tx_ref {original.tx_ref!r}, not the refunded payment",
                provider=NAME,
                reference=request.reference,
            )
        return str(original.id)

    # -- HTTP --------------------------------------------------------------------------------

    def _created(self, response: HttpResponse, reference: str | None) -> Created:
        """The id from a charge or refund answer; refusals and failures raised."""
        envelope = _envelope(response)
        if not _ok(response) or envelope is None or envelope.status != "success":
            raise self._error(response, envelope, reference, sends_money=True)
        try:
            return Created.model_validate(envelope.data)
        except ValidationError as exc:
            raise ProviderResponseInvalid(
                f"unreadable Flutterwave answer: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=reference,
            ) from exc

    async def _fetch(
        self, path: str, operation: str, request: MoneyRequest, model: type[_M]
    ) -> _M | None:
        """GET one transaction or refund; None when Flutterwave says there is no such thing."""
        response = await self._call(
            "GET", path, operation=operation, transaction_id=request.transaction_id
        )
        envelope = _envelope(response)
        message = envelope.message if envelope is not None else None
        # Only Flutterwave's own error answer counts: a proxy's 404 page proves nothing.
        if (
            envelope is not None
            and envelope.status == "error"
            and (
                response.status == 404 or (response.status in (200, 400) and is_not_found(message))
            )
        ):
            return None
        if not _ok(response) or envelope is None or envelope.status != "success":
            raise self._error(response, envelope, request.reference, sends_money=False)
        try:
            return model.model_validate(envelope.data)
        except ValidationError as exc:
            raise ProviderResponseInvalid(
                f"unreadable Flutterwave {operation} answer: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            ) from exc

    def _error(
        self,
        response: HttpResponse,
        envelope: Envelope | None,
        reference: str | None,
        *,
        sends_money: bool,
    ) -> ProviderError:
        # 503 after ~28 s is Flutterwave timing out: it may still process the request. An HTTP
        # 200 whose status is "error" is a refusal like a 4xx.
        message = envelope.message if envelope is not None else None
        status = response.status
        return error_for(
            NAME,
            "Flutterwave",
            response,
            reference=reference,
            code=error_code(message) or None,
            sends_money=sends_money,
            refused=400 <= status < 500 or (envelope is not None and envelope.status == "error"),
        )

    def _secret_key(self) -> str:
        key = self._settings.secret_key
        if key is None or not key.get_secret_value():
            raise ProviderAuthFailed(
                "Flutterwave secret key missing (KUNPAY_FLUTTERWAVE__SECRET_KEY)", provider=NAME
            )
        return key.get_secret_value()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        transaction_id: str | None,
        json_body: dict[str, Any] | None = None,
        sends_money: bool = False,
    ) -> HttpResponse:
        return await self._http.request(
            method,
            path,
            operation=operation,
            transaction_id=transaction_id,
            headers={"Authorization": f"Bearer {self._secret_key()}"},
            json_body=json_body,
            sends_money=sends_money,
        )


def _ok(response: HttpResponse) -> bool:
    return 200 <= response.status < 300


def _envelope(response: HttpResponse) -> Envelope | None:
    try:
        return Envelope.model_validate_json(response.body)
    except ValidationError:
        return None
