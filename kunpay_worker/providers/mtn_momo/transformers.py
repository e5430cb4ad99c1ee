"""MTN MoMo request/response models and the status map. Pure: no I/O."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kunpay_sdk.money import format_amount
from kunpay_worker.providers.base import Lookup, ProviderStatus

__all__ = [
    "STATUS_MAP",
    "AccountHolderActive",
    "BalanceBody",
    "ErrorBody",
    "Party",
    "Refund",
    "RequestToPay",
    "RequestToPayStatus",
    "TokenResponse",
    "Transfer",
    "lookup_from_status",
    "refund_body",
    "request_to_pay_body",
    "transfer_body",
]

# Every status MTN documents or its sandbox returns, and what it means for us.
STATUS_MAP: dict[str, ProviderStatus] = {
    "PENDING": ProviderStatus.PENDING,
    "CREATED": ProviderStatus.PENDING,
    "ONGOING": ProviderStatus.PENDING,
    "SUCCESSFUL": ProviderStatus.COMPLETED,
    "FAILED": ProviderStatus.FAILED,
    "REJECTED": ProviderStatus.FAILED,
    "TIMEOUT": ProviderStatus.FAILED,
    "EXPIRED": ProviderStatus.FAILED,
}

# When MTN gives a failing status without a reason, the status says why.
DEFAULT_REASONS = {
    "REJECTED": "APPROVAL_REJECTED",
    "TIMEOUT": "EXPIRED",
    "EXPIRED": "EXPIRED",
    "FAILED": "FAILED",
}


class _MtnModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TokenResponse(_MtnModel):
    access_token: str = Field(min_length=1)
    token_type: str | None = None
    expires_in: int = Field(gt=0)


class Party(_MtnModel):
    partyIdType: Literal["MSISDN", "EMAIL", "PARTY_CODE"] = "MSISDN"
    partyId: str


class RequestToPay(_MtnModel):
    amount: str
    currency: str
    externalId: str
    payer: Party
    payerMessage: str = Field(min_length=1)
    payeeNote: str = Field(min_length=1)


class Transfer(_MtnModel):
    amount: str
    currency: str
    externalId: str
    payee: Party
    payerMessage: str = Field(min_length=1)
    payeeNote: str = Field(min_length=1)


class Refund(_MtnModel):
    amount: str
    currency: str
    externalId: str
    payerMessage: str = Field(min_length=1)
    payeeNote: str = Field(min_length=1)
    referenceIdToRefund: str


class BalanceBody(_MtnModel):
    availableBalance: str
    currency: str


class AccountHolderActive(_MtnModel):
    result: bool


class ErrorReason(_MtnModel):
    code: str | None = None
    message: str | None = None


class RequestToPayStatus(_MtnModel):
    """The status body of a request to pay, a transfer or a refund (payer or payee)."""

    amount: str | None = None
    currency: str | None = None
    financialTransactionId: str | None = None
    externalId: str | None = None
    payer: Party | None = None
    payee: Party | None = None
    status: str
    reason: str | ErrorReason | None = None


class ErrorBody(_MtnModel):
    code: str | None = None
    message: str | None = None


def request_to_pay_body(
    *, amount: Decimal, currency: str, msisdn: str, external_id: str, message: str
) -> RequestToPay:
    text = message[:160] or "Payment"
    return RequestToPay(
        amount=format_amount(amount, currency),
        currency=currency,
        externalId=external_id,
        payer=Party(partyIdType="MSISDN", partyId=msisdn),
        payerMessage=text,
        payeeNote=text,
    )


def transfer_body(
    *, amount: Decimal, currency: str, msisdn: str, external_id: str, message: str
) -> Transfer:
    text = message[:160] or "Payment"
    return Transfer(
        amount=format_amount(amount, currency),
        currency=currency,
        externalId=external_id,
        payee=Party(partyIdType="MSISDN", partyId=msisdn),
        payerMessage=text,
        payeeNote=text,
    )


def refund_body(
    *, amount: Decimal, currency: str, external_id: str, message: str, original_reference: str
) -> Refund:
    text = message[:160] or "Refund"
    return Refund(
        amount=format_amount(amount, currency),
        currency=currency,
        externalId=external_id,
        payerMessage=text,
        payeeNote=text,
        referenceIdToRefund=original_reference,
    )


class UnknownStatus(ValueError):
    pass


def lookup_from_status(body: RequestToPayStatus) -> Lookup:
    status = body.status.upper()
    mapped = STATUS_MAP.get(status)
    if mapped is None:
        raise UnknownStatus(f"MTN status {body.status!r} is not one we know")
    reason: str | None = None
    if isinstance(body.reason, ErrorReason):
        reason = body.reason.code or body.reason.message
    elif body.reason:
        reason = body.reason
    if mapped is ProviderStatus.FAILED and not reason:
        reason = DEFAULT_REASONS.get(status, status)
    if mapped is not ProviderStatus.FAILED:
        reason = None
    return Lookup(
        found=True,
        status=mapped,
        reason=reason,
        provider_status=status,
        provider_transaction_id=body.financialTransactionId,
    )
