"""Orange Money Cameroon "mp" request/response models, the status map and the failure codes.
Pure: no I/O.

Orange publishes no reference for this API; what is here comes from open-source clients and
integrators' tutorials (see the provider tests' module docstring). Where they disagree the models
are tolerant: every answer field is optional, numbers and strings are both accepted.
"""

from __future__ import annotations

import re
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from kunpay_sdk.money import format_amount
from kunpay_worker.providers.base import Lookup, ProviderStatus

__all__ = [
    "CODE_REASONS",
    "CONFIRMED",
    "COUNTRY_CODE",
    "DEFAULT_REASONS",
    "MESSAGE_REASONS",
    "MSISDN_WITH_COUNTRY_CODE",
    "STATUS_MAP",
    "InitAnswer",
    "PayBody",
    "PaymentAnswer",
    "PaymentData",
    "TokenResponse",
    "UnknownStatus",
    "code_reason",
    "failure_code",
    "lookup_from_payment",
    "orange_msisdn",
    "order_id_for",
    "pay_body",
    "pay_refusal",
    "reason_for",
]

# Every status the sources show, and what it means for us. The "SUCCESSFULL" spelling is
# Orange's; SUCCESSFUL/SUCCESS/CANCELED appear in clients that guard against variants.
STATUS_MAP: dict[str, ProviderStatus] = {
    "INITIATED": ProviderStatus.PENDING,  # payToken issued, pay not (yet) confirmed
    "PENDING": ProviderStatus.PENDING,  # the payer has the USSD prompt
    "SUCCESSFULL": ProviderStatus.COMPLETED,
    "SUCCESSFUL": ProviderStatus.COMPLETED,
    "SUCCESS": ProviderStatus.COMPLETED,  # Orange's web payment spelling
    "FAILED": ProviderStatus.FAILED,
    "EXPIRED": ProviderStatus.FAILED,  # the payer never confirmed before the payToken expired
    "CANCELLED": ProviderStatus.FAILED,
    "CANCELED": ProviderStatus.FAILED,
}

# A success status is final only once Orange confirmed the debit (confirmtxnstatus "200");
# before that the payment is still pending.
CONFIRMED = "200"

# Orange's codes (inittxnstatus / confirmtxnstatus, or "NNNNN :: text" in message) → reason.
# 60019 is in several clients' handling of real answers; 00671, 99051 and 0066111 in one
# client each; the 600xx rows after them in one client's message table (treat as uncertain).
CODE_REASONS: dict[str, str] = {
    "60019": "NOT_ENOUGH_FUNDS",  # refined by the message, see MESSAGE_REASONS
    "00671": "PAYER_NOT_FOUND",  # not an Orange number
    "99051": "PAYER_NOT_FOUND",  # an Orange number without an Orange Money account
    "0066111": "PAYER_NOT_FOUND",  # invalid subscriber number
    "60021": "NOT_ALLOWED",  # account not active
    "60022": "PAYER_LIMIT_REACHED",  # transaction limit
    "60026": "SERVICE_UNAVAILABLE",
    "60031": "PAYER_NOT_FOUND",  # invalid number
    "60032": "NOT_ALLOWED",  # service not available for this number
    "60033": "NOT_ALLOWED",  # account blocked
    "60034": "PAYER_LIMIT_REACHED",  # daily limit
    "60035": "PAYER_LIMIT_REACHED",  # monthly limit
}

# Clients show 60019 carrying other refusals than low balance, told apart by the message:
# (words that must all appear, lower case) → reason.
MESSAGE_REASONS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "60019": [
        (("bloqu",), "NOT_ALLOWED"),  # "Utilisateur bloque"
        (("montant", "maximum"), "PAYER_LIMIT_REACHED"),  # "... superieur au montant maximum"
    ],
}

# When Orange gives a failing status without a code, the status says why.
DEFAULT_REASONS: dict[str, str] = {
    "FAILED": "FAILED",
    "EXPIRED": "EXPIRED",
    "CANCELLED": "APPROVAL_REJECTED",
    "CANCELED": "APPROVAL_REJECTED",
}

# The mp API takes Cameroon numbers as their nine national digits ("690000000"): every client
# found strips 237. Flip this if Orange ever asks for the country code.
MSISDN_WITH_COUNTRY_CODE = False
COUNTRY_CODE = "237"
_NATIONAL = re.compile(r"^\d{9}$")
_CODE_IN_MESSAGE = re.compile(r"^\s*(\d{3,8})\s*::")
_DESCRIPTION_MAX = 125


class _OrangeModel(BaseModel):
    # Orange sends ids and amounts as numbers in some answers and strings in others.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, coerce_numbers_to_str=True)


class TokenResponse(_OrangeModel):
    access_token: str = Field(min_length=1)
    token_type: str | None = None
    scope: str | None = None
    expires_in: int = Field(gt=0)


class InitData(_OrangeModel):
    payToken: str = Field(min_length=1)


class InitAnswer(_OrangeModel):
    """``POST mp/init`` → ``{"message": ..., "data": {"payToken": "MP..."}}``."""

    message: str | None = None
    data: InitData


class PayBody(_OrangeModel):
    """``POST mp/pay``. ``pin`` is the merchant's PIN: a secret, masked when recorded."""

    subscriberMsisdn: str
    channelUserMsisdn: str
    amount: str
    description: str
    orderId: str
    pin: str
    payToken: str
    notifUrl: str


class PaymentData(_OrangeModel):
    """The payment as Orange describes it in the pay, status and notification answers."""

    id: str | None = None
    createtime: str | None = None
    subscriberMsisdn: str | None = None
    channelUserMsisdn: str | None = None
    amount: str | None = None
    payToken: str | None = None
    orderId: str | None = None
    txnid: str | None = None
    txnmode: str | None = None
    inittxnmessage: str | None = None
    inittxnstatus: str | None = None
    confirmtxnstatus: str | None = None
    confirmtxnmessage: str | None = None
    status: str | None = None
    notifUrl: str | None = None
    description: str | None = None


class PaymentAnswer(_OrangeModel):
    """``{"message": ..., "data": {...}}`` from mp/pay and mp/paymentstatus."""

    message: str | None = None
    data: PaymentData | None = None


class UnknownStatus(ValueError):
    pass


def orange_msisdn(msisdn: str, *, with_country_code: bool = MSISDN_WITH_COUNTRY_CODE) -> str:
    """A Cameroon number (with or without 237, '+' or '00') in the form the mp API takes.

    Raises ValueError for anything that is not nine national digits once the prefix is gone.
    """
    digits = msisdn.strip().removeprefix("+").removeprefix("00")
    if len(digits) == len(COUNTRY_CODE) + 9 and digits.startswith(COUNTRY_CODE):
        digits = digits[len(COUNTRY_CODE) :]
    if not _NATIONAL.match(digits):
        raise ValueError(f"not a Cameroon number: {msisdn[-3:]!r} (last digits)")
    return COUNTRY_CODE + digits if with_country_code else digits


def order_id_for(reference: str, max_length: int | None = None) -> str:
    """Orange's orderId: our reference as is. One client says Orange takes at most 20
    characters and no '-'; ``max_length`` then sends the reference's hex digits, cut."""
    if max_length is None:
        return reference
    return reference.replace("-", "")[:max_length]


def pay_body(
    *,
    subscriber: str,
    merchant: str,
    amount: Decimal,
    currency: str,
    order_id: str,
    message: str,
    pin: str,
    pay_token: str,
    callback_url: str | None,
) -> PayBody:
    return PayBody(
        subscriberMsisdn=orange_msisdn(subscriber),
        channelUserMsisdn=orange_msisdn(merchant),
        amount=format_amount(amount, currency),
        description=message[:_DESCRIPTION_MAX] or "Payment",
        orderId=order_id,
        pin=pin,
        payToken=pay_token,
        # Clients always send the key; answers show "" when a merchant gave none.
        notifUrl=callback_url or "",
    )


def failure_code(answer: PaymentAnswer | None) -> str | None:
    """Orange's error code in an answer: inittxnstatus, else confirmtxnstatus, else the
    "NNNNN :: text" prefix of the message; None when the answer carries none ("200" is OK)."""
    if answer is None:
        return None
    data = answer.data
    if data is not None:
        for code in (data.inittxnstatus, data.confirmtxnstatus):
            if code and code.strip() and code.strip() != CONFIRMED:
                return code.strip()
    if answer.message:
        found = _CODE_IN_MESSAGE.match(answer.message)
        if found and found.group(1) != CONFIRMED:
            return found.group(1)
    return None


def reason_for(code: str, message: str | None = None) -> str:
    """The reason kunpay records for one of Orange's codes (unknown ones keep the code)."""
    text = (message or "").lower()
    for words, reason in MESSAGE_REASONS.get(code, []):
        if all(word in text for word in words):
            return reason
    return CODE_REASONS.get(code, f"ORANGE_{code}")


def code_reason(answer: PaymentAnswer | None) -> str | None:
    """The reason for the error code an answer carries (read with its messages), or None."""
    if answer is None:
        return None
    code = failure_code(answer)
    return reason_for(code, _message(answer)) if code is not None else None


def _message(answer: PaymentAnswer) -> str | None:
    data = answer.data
    parts = [answer.message]
    if data is not None:
        parts += [data.inittxnmessage, data.confirmtxnmessage]
    return " ".join(p for p in parts if p) or None


def _failure_reason(answer: PaymentAnswer, status: str | None) -> str:
    code = failure_code(answer)
    if code is not None:
        return reason_for(code, _message(answer))
    return DEFAULT_REASONS.get(status or "FAILED", status or "FAILED")


def _status(data: PaymentData) -> str | None:
    return data.status.strip().upper() if data.status and data.status.strip() else None


def pay_refusal(answer: PaymentAnswer) -> str | None:
    """For an HTTP 200 mp/pay answer: the reason when it is a refusal, None when Orange took
    the payment (PENDING, or no failing status and no error code).

    Raises UnknownStatus for a status we do not know, or an answer with neither data nor a
    code (the outcome is then unknown).
    """
    data = answer.data
    status = _status(data) if data is not None else None
    if status is not None:
        mapped = STATUS_MAP.get(status)
        if mapped is None:
            raise UnknownStatus(f"Orange pay status {status!r} is not one we know")
        if mapped is not ProviderStatus.FAILED:
            # Taken: a stray code beside a live status is for the lookups to judge.
            return None
        return _failure_reason(answer, status)
    code = failure_code(answer)
    if code is not None:
        return reason_for(code, _message(answer))
    if data is None:
        raise UnknownStatus("the pay answer has neither data nor an error code")
    return None


def lookup_from_payment(answer: PaymentAnswer) -> Lookup:
    """A paymentstatus answer → Lookup. No ``data`` means Orange does not know the payToken.

    Raises UnknownStatus for a missing or unknown status.
    """
    data = answer.data
    if data is None:
        return Lookup(found=False)
    status = _status(data)
    mapped = STATUS_MAP.get(status) if status is not None else None
    if status is None or mapped is None:
        raise UnknownStatus(f"Orange payment status {data.status!r} is not one we know")
    if mapped is ProviderStatus.COMPLETED and (data.confirmtxnstatus or "").strip() != CONFIRMED:
        # Orange says success but has not confirmed the debit: not money yet.
        mapped = ProviderStatus.PENDING
    reason = _failure_reason(answer, status) if mapped is ProviderStatus.FAILED else None
    return Lookup(
        found=True,
        status=mapped,
        reason=reason,
        provider_status=status,
        provider_transaction_id=data.txnid,
        handle=data.payToken,
    )
