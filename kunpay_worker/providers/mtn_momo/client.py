"""MTN MoMo Open API client: collection (request to pay), disbursement (transfer, balance,
account holder) and refunds, each product with its own credentials and token."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Self, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.providers.base import (
    AccountHolder,
    AttemptRecorder,
    BackendBase,
    Balance,
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
    ProviderResponseInvalid,
    ProviderUnavailable,
)
from kunpay_worker.providers.http import (
    HttpResponse,
    ProviderHttp,
    TokenCache,
    error_for,
)
from kunpay_worker.providers.mtn_momo.transformers import (
    AccountHolderActive,
    BalanceBody,
    ErrorBody,
    RequestToPayStatus,
    TokenResponse,
    UnknownStatus,
    lookup_from_status,
    refund_body,
    request_to_pay_body,
    transfer_body,
)
from kunpay_worker.settings import MtnMomoSettings, MtnProduct, Settings

__all__ = ["MtnMomoClient"]

NAME = "MTN_MOMO"
_M = TypeVar("_M", bound=BaseModel)

# Per transaction type: (product, path to create, path prefix to look up, operation name).
_ENDPOINTS: dict[TransactionType, tuple[str, str, str]] = {
    TransactionType.COLLECTION: (
        "collection",
        "/collection/v1_0/requesttopay",
        "request_to_pay",
    ),
    TransactionType.DISBURSEMENT: ("disbursement", "/disbursement/v1_0/transfer", "transfer"),
    TransactionType.REFUND: ("disbursement", "/disbursement/v1_0/refund", "refund"),
}


@dataclass(frozen=True, slots=True)
class _Credentials:
    subscription_key: str
    api_user: str
    api_key: str


class MtnMomoClient(BackendBase):
    name: ClassVar[str] = NAME
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.COLLECT,
            Capability.DISBURSE,
            Capability.REFUND,
            Capability.PARTIAL_REFUND,
            Capability.BALANCE,
            Capability.ACCOUNT_CHECK,
        }
    )
    operators: ClassVar[frozenset[str]] = frozenset({"MTN"})
    dedupes_by_reference: ClassVar[bool] = True

    def __init__(
        self,
        settings: MtnMomoSettings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = ProviderHttp(
            NAME, session, base_url=settings.base_url, timeout=timeout, recorder=recorder
        )
        self._tokens = {
            product: TokenCache(margin=settings.token_refresh_margin, clock=clock)
            for product in ("collection", "disbursement")
        }

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
        """Collections need the collection product; payouts, refunds and the balance the
        disbursement product. Either is enough to start; what is missing is rejected."""
        products = [getattr(settings.mtn_momo, p) for p in ("collection", "disbursement")]
        if all(product.missing() for product in products):
            names = ", ".join(
                f"KUNPAY_MTN_MOMO__{p.upper()}__{m.upper()}"
                for p in ("collection", "disbursement")
                for m in ("subscription_key", "api_user", "api_key")
            )
            return [
                f"MTN_MOMO credentials missing: set the collection or disbursement ones ({names})"
            ]
        return []

    @classmethod
    def available(cls, settings: Settings) -> frozenset[Capability]:
        available = set(cls.capabilities)
        if settings.mtn_momo.collection.missing():
            available -= {Capability.COLLECT}
        if settings.mtn_momo.disbursement.missing():
            available -= {
                Capability.DISBURSE,
                Capability.REFUND,
                Capability.PARTIAL_REFUND,
                Capability.BALANCE,
            }
        if settings.mtn_momo.collection.missing() and settings.mtn_momo.disbursement.missing():
            available -= {Capability.ACCOUNT_CHECK}
        return frozenset(available)

    @classmethod
    def currencies(cls, settings: Settings) -> list[str]:
        return settings.mtn_momo.currencies

    # -- money operations --------------------------------------------------------------------

    async def send(self, request: MoneyRequest) -> SendReceipt:
        product, path, operation = _ENDPOINTS[request.kind]
        body: BaseModel
        if request.kind is TransactionType.COLLECTION:
            body = request_to_pay_body(
                amount=request.amount,
                currency=request.currency,
                msisdn=request.msisdn,
                external_id=request.transaction_id,
                message=request.message,
            )
        elif request.kind is TransactionType.DISBURSEMENT:
            body = transfer_body(
                amount=request.amount,
                currency=request.currency,
                msisdn=request.msisdn,
                external_id=request.transaction_id,
                message=request.message,
            )
        else:
            if request.original_reference is None:
                raise ValueError("a refund needs the original's reference")
            body = refund_body(
                amount=request.amount,
                currency=request.currency,
                external_id=request.transaction_id,
                message=request.message,
                original_reference=request.original_reference,
            )
        headers = {"X-Reference-Id": request.reference}
        if request.callback_url:
            headers["X-Callback-Url"] = request.callback_url
        response = await self._call(
            product,
            "POST",
            path,
            operation=operation,
            transaction_id=request.transaction_id,
            json_body=body.model_dump(),
            headers=headers,
            sends_money=True,
        )
        if response.status == 202:
            return SendReceipt(SendResult.ACCEPTED)
        if response.status == 409:
            # MTN already has this reference: the first send landed. Look it up for the status.
            return SendReceipt(SendResult.DUPLICATE)
        raise self._error(response, request.reference, sends_money=True)

    async def lookup(self, request: MoneyRequest) -> Lookup:
        product, path, operation = _ENDPOINTS[request.kind]
        response = await self._call(
            product,
            "GET",
            f"{path}/{request.reference}",
            operation=f"{operation}_status",
            transaction_id=request.transaction_id,
        )
        if response.status == 404:
            return Lookup(found=False)
        if response.status != 200:
            raise self._error(response, request.reference, sends_money=False)
        try:
            return lookup_from_status(RequestToPayStatus.model_validate_json(response.body))
        except (ValidationError, UnknownStatus) as exc:
            raise ProviderResponseInvalid(
                f"unreadable {operation} status: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            ) from exc

    async def preflight(self, request: MoneyRequest) -> str | None:
        """Before a payout: the payee's account must be active and our balance enough."""
        if request.kind is not TransactionType.DISBURSEMENT:
            return None
        if self._settings.check_account_holder:
            holder = await self._account_holder("disbursement", request.msisdn)
            if holder.active is False:
                return "PAYEE_ACCOUNT_INACTIVE: MTN says the payee's account is not active"
        if self._settings.check_balance_before_transfer:
            balance = await self.balance()
            if balance.currency == request.currency and balance.amount < request.amount:
                return (
                    f"INSUFFICIENT_BALANCE: disbursement balance {balance.amount} "
                    f"{balance.currency} is less than {request.amount}"
                )
        return None

    async def balance(self) -> Balance:
        response = await self._call(
            "disbursement",
            "GET",
            "/disbursement/v1_0/account/balance",
            operation="balance",
            transaction_id=None,
        )
        body = self._parse(response, BalanceBody, "balance")
        try:
            amount = Decimal(body.availableBalance)
        except InvalidOperation as exc:
            raise ProviderResponseInvalid(
                f"unreadable balance {body.availableBalance!r}", provider=NAME
            ) from exc
        return Balance(amount=amount, currency=body.currency)

    async def account_holder(self, msisdn: str, operator: str) -> AccountHolder:
        product = "collection" if not self._settings.collection.missing() else "disbursement"
        return await self._account_holder(product, msisdn)

    async def _account_holder(self, product: str, msisdn: str) -> AccountHolder:
        response = await self._call(
            product,
            "GET",
            f"/{product}/v1_0/accountholder/msisdn/{msisdn}/active",
            operation="account_holder",
            transaction_id=None,
        )
        if response.status == 404:
            return AccountHolder(active=False, operator="MTN")
        body = self._parse(response, AccountHolderActive, "account holder")
        return AccountHolder(active=body.result, operator="MTN")

    # -- HTTP --------------------------------------------------------------------------------

    def _parse(self, response: HttpResponse, model: type[_M], what: str) -> _M:
        if response.status != 200:
            raise self._error(response, None, sends_money=False)
        try:
            return model.model_validate_json(response.body)
        except ValidationError as exc:
            raise ProviderResponseInvalid(
                f"unreadable MTN MoMo {what}: {exc}", provider=NAME, http_status=200
            ) from exc

    def _error(
        self, response: HttpResponse, reference: str | None, *, sends_money: bool
    ) -> ProviderError:
        return error_for(
            NAME,
            "MTN MoMo",
            response,
            reference=reference,
            code=_error_code(response),
            sends_money=sends_money,
        )

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
    ) -> HttpResponse:
        credentials = self._credentials(product)
        tokens = self._tokens[product]
        for attempt in (1, 2):
            token = await tokens.get(lambda: self._fetch_token(product, credentials))
            response = await self._http.request(
                method,
                path,
                operation=operation,
                transaction_id=transaction_id,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Ocp-Apim-Subscription-Key": credentials.subscription_key,
                    "X-Target-Environment": self._settings.target_environment,
                    **(headers or {}),
                },
                json_body=json_body,
                sends_money=sends_money,
            )
            if response.status == 401 and attempt == 1:
                # The token may have been revoked early: drop it and refresh once.
                tokens.invalidate(token)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_token(self, product: str, credentials: _Credentials) -> tuple[str, float]:
        basic = base64.b64encode(f"{credentials.api_user}:{credentials.api_key}".encode()).decode()
        try:
            response = await self._http.request(
                "POST",
                f"/{product}/token/",
                operation="token",
                transaction_id=None,
                headers={
                    "Authorization": f"Basic {basic}",
                    "Ocp-Apim-Subscription-Key": credentials.subscription_key,
                },
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
                provider_code=_error_code(response),
            )
        try:
            parsed = TokenResponse.model_validate_json(response.body)
        except ValidationError as exc:
            raise ProviderNotReached(
                f"unreadable MTN MoMo token answer: {exc}", provider=NAME, http_status=200
            ) from exc
        return parsed.access_token, parsed.expires_in


def _error_code(response: HttpResponse) -> str | None:
    try:
        return ErrorBody.model_validate_json(response.body).code
    except ValidationError:
        return None
