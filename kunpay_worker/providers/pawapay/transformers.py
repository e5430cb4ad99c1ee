"""PawaPay (v2) request/response models, the status map and failure handling. Pure: no I/O.

PawaPay answers an initiation (deposit, payout, refund) with ``ACCEPTED``, ``REJECTED`` (with a
``failureReason``) or ``DUPLICATE_IGNORED`` (it already has that id: the first request landed),
and a status check with ``{status: FOUND | NOT_FOUND, data: {..., status, failureReason}}``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kunpay_sdk.contracts import TransactionType
from kunpay_sdk.money import format_amount
from kunpay_worker.providers.base import Lookup, ProviderStatus, SendResult

__all__ = [
    "ID_FIELDS",
    "INITIATION_RESULTS",
    "STATUS_MAP",
    "AccountDetails",
    "DepositRequest",
    "ErrorBody",
    "FailureReason",
    "InitiationRejected",
    "InitiationResponse",
    "MobileMoneyParty",
    "PayoutRequest",
    "PredictProviderRequest",
    "PredictProviderResponse",
    "RefundRequest",
    "StatusData",
    "StatusResponse",
    "UnknownStatus",
    "deposit_body",
    "failure_code",
    "initiation_result",
    "lookup_from_status",
    "payout_body",
    "refund_body",
    "wire_amount",
]

# Every status a deposit, payout or refund can have once PawaPay accepted it, and what it means
# for us. ENQUEUED is payouts only (held until the provider can take them); SUBMITTED is not in
# the v2 API reference but PawaPay's v2 sandbox test-number table shows it (requests stuck at the
# operator), so it is read as pending rather than as an unreadable answer.
STATUS_MAP: dict[str, ProviderStatus] = {
    "ACCEPTED": ProviderStatus.PENDING,
    "ENQUEUED": ProviderStatus.PENDING,
    "SUBMITTED": ProviderStatus.PENDING,
    "PROCESSING": ProviderStatus.PENDING,
    "IN_RECONCILIATION": ProviderStatus.PENDING,
    "COMPLETED": ProviderStatus.COMPLETED,
    "FAILED": ProviderStatus.FAILED,
}

# The answer to an initiation. None: REJECTED, a final refusal carrying a failureCode.
INITIATION_RESULTS: dict[str, SendResult | None] = {
    "ACCEPTED": SendResult.ACCEPTED,
    "DUPLICATE_IGNORED": SendResult.DUPLICATE,
    "REJECTED": None,
}

# The id field PawaPay knows each kind of movement by (our provider reference).
ID_FIELDS: dict[TransactionType, str] = {
    TransactionType.COLLECTION: "depositId",
    TransactionType.DISBURSEMENT: "payoutId",
    TransactionType.REFUND: "refundId",
}

# A FAILED status without a failure code (PawaPay documents one on every failure).
DEFAULT_FAILURE = "UNSPECIFIED_FAILURE"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AccountDetails(_Model):
    phoneNumber: str
    provider: str


class MobileMoneyParty(_Model):
    """A payer (deposits) or a recipient (payouts, refunds): a mobile money wallet."""

    type: Literal["MMO"] = "MMO"
    accountDetails: AccountDetails


class DepositRequest(_Model):
    depositId: str
    amount: str
    currency: str
    payer: MobileMoneyParty
    customerMessage: str | None = Field(None, min_length=4, max_length=22)


class PayoutRequest(_Model):
    payoutId: str
    amount: str
    currency: str
    recipient: MobileMoneyParty
    customerMessage: str | None = Field(None, min_length=4, max_length=22)


class RefundRequest(_Model):
    refundId: str
    depositId: str
    amount: str
    currency: str


class FailureReason(_Model):
    failureCode: str | None = None
    failureMessage: str | None = None


class InitiationResponse(_Model):
    depositId: str | None = None
    payoutId: str | None = None
    refundId: str | None = None
    status: str
    created: str | None = None
    failureReason: FailureReason | None = None


class StatusData(_Model):
    """The ``data`` of a status check, and the body of a callback."""

    depositId: str | None = None
    payoutId: str | None = None
    refundId: str | None = None
    status: str
    amount: str | None = None
    currency: str | None = None
    country: str | None = None
    created: str | None = None
    providerTransactionId: str | None = None
    failureReason: FailureReason | None = None


class StatusResponse(_Model):
    status: Literal["FOUND", "NOT_FOUND"]
    data: StatusData | None = None


class PredictProviderRequest(_Model):
    phoneNumber: str


class PredictProviderResponse(_Model):
    country: str
    provider: str
    phoneNumber: str


class ErrorBody(_Model):
    failureReason: FailureReason | None = None


class UnknownStatus(ValueError):
    """An answer whose status we do not know, or that is about another id."""


class InitiationRejected(Exception):
    """PawaPay answered REJECTED: final, nothing will happen with this id."""

    def __init__(self, code: str, message: str | None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


def wire_amount(amount: Decimal, currency: str) -> str:
    """PawaPay's amount string: the currency's exponent, no exponent noise, and no trailing
    zeros after the point (its pattern ``^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$``
    refuses "12.50")."""
    text = format_amount(amount, currency)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _party(msisdn: str, provider: str) -> MobileMoneyParty:
    return MobileMoneyParty(accountDetails=AccountDetails(phoneNumber=msisdn, provider=provider))


def deposit_body(
    *,
    reference: str,
    amount: Decimal,
    currency: str,
    msisdn: str,
    provider: str,
    customer_message: str | None,
) -> DepositRequest:
    return DepositRequest(
        depositId=reference,
        amount=wire_amount(amount, currency),
        currency=currency,
        payer=_party(msisdn, provider),
        customerMessage=customer_message,
    )


def payout_body(
    *,
    reference: str,
    amount: Decimal,
    currency: str,
    msisdn: str,
    provider: str,
    customer_message: str | None,
) -> PayoutRequest:
    return PayoutRequest(
        payoutId=reference,
        amount=wire_amount(amount, currency),
        currency=currency,
        recipient=_party(msisdn, provider),
        customerMessage=customer_message,
    )


def refund_body(
    *, reference: str, deposit_id: str, amount: Decimal, currency: str
) -> RefundRequest:
    # The amount is always sent, so a partial refund is never taken for a full one.
    return RefundRequest(
        refundId=reference,
        depositId=deposit_id,
        amount=wire_amount(amount, currency),
        currency=currency,
    )


def failure_code(body: bytes) -> str | None:
    """The failureCode of an error answer (any status), or None."""
    try:
        reason = ErrorBody.model_validate_json(body).failureReason
    except ValidationError:
        return None
    return reason.failureCode if reason is not None else None


def initiation_result(
    answer: InitiationResponse, *, kind: TransactionType, reference: str
) -> SendResult:
    """ACCEPTED or DUPLICATE_IGNORED as a SendResult; REJECTED raises InitiationRejected."""
    answered_id = getattr(answer, ID_FIELDS[kind])
    if answered_id is not None and answered_id.lower() != reference.lower():
        raise UnknownStatus(f"PawaPay answered about {ID_FIELDS[kind]} {answered_id}")
    status = answer.status.upper()
    if status not in INITIATION_RESULTS:
        raise UnknownStatus(f"PawaPay initiation status {answer.status!r} is not one we know")
    result = INITIATION_RESULTS[status]
    if result is None:
        reason = answer.failureReason or FailureReason()
        raise InitiationRejected(reason.failureCode or "REJECTED", reason.failureMessage)
    return result


def lookup_from_status(body: StatusResponse, *, kind: TransactionType, reference: str) -> Lookup:
    if body.status == "NOT_FOUND":
        return Lookup(found=False)
    data = body.data
    if data is None:
        raise UnknownStatus("PawaPay said FOUND without the data")
    answered_id = getattr(data, ID_FIELDS[kind])
    if answered_id is not None and answered_id.lower() != reference.lower():
        raise UnknownStatus(f"PawaPay answered about {ID_FIELDS[kind]} {answered_id}")
    status = data.status.upper()
    mapped = STATUS_MAP.get(status)
    if mapped is None:
        raise UnknownStatus(f"PawaPay status {data.status!r} is not one we know")
    reason: str | None = None
    if mapped is ProviderStatus.FAILED:
        code = data.failureReason.failureCode if data.failureReason else None
        reason = code or DEFAULT_FAILURE
    return Lookup(
        found=True,
        status=mapped,
        reason=reason,
        provider_status=status,
        provider_transaction_id=data.providerTransactionId,
    )
