"""Flutterwave v3 request/response models, the status maps and the verification rule. Pure: no
I/O.

Flutterwave's top-level ``status: "success"`` only says the API call worked; what happened to
the money is ``data.status``. A transaction reads as COMPLETED only when ``data.status`` is
``"successful"`` **and** its ``tx_ref``, ``amount`` and ``currency`` are the ones we asked for
(Flutterwave's "Transaction Verification" guide). An answer about some other charge is never
taken for ours: :class:`Mismatch` is raised, whatever its status, and the client turns it into
ProviderResponseInvalid.

Flutterwave documents no failure codes for francophone mobile money, only a free-text
``processor_response``. :func:`failure_reason` turns the texts we know into kunpay's generic
reasons (the names in ``kunpay_worker.sandbox.scenarios``) and any other text into a stable
upper-case code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from kunpay_sdk.money import format_amount
from kunpay_worker.providers.base import Lookup, ProviderStatus

__all__ = [
    "REFUND_STATUS_MAP",
    "STATUS_MAP",
    "ChargeBody",
    "Created",
    "Envelope",
    "Mismatch",
    "RefundBody",
    "RefundData",
    "TransactionData",
    "UnknownStatus",
    "charge_body",
    "error_code",
    "failure_reason",
    "is_not_found",
    "lookup_from_refund",
    "lookup_from_transaction",
    "refund_body",
    "webhook_is_authentic",
    "webhook_signature",
]

# Every transaction status Flutterwave v3 documents or its SDK samples show (data.status of the
# charge, verify and webhook answers). "successful" is the only success; the ACH-only
# "success-pending-validation" is not one.
STATUS_MAP: dict[str, ProviderStatus] = {
    "pending": ProviderStatus.PENDING,
    "success-pending-validation": ProviderStatus.PENDING,
    "successful": ProviderStatus.COMPLETED,
    "failed": ProviderStatus.FAILED,
    "cancelled": ProviderStatus.FAILED,
}

# Refund statuses: "completed" in the refund answer, "completed-mpgs"/"successful"/"failed" as
# filters of the refunds list, "pending" while the refund is being paid out.
REFUND_STATUS_MAP: dict[str, ProviderStatus] = {
    "pending": ProviderStatus.PENDING,
    "completed": ProviderStatus.COMPLETED,
    "completed-mpgs": ProviderStatus.COMPLETED,
    "successful": ProviderStatus.COMPLETED,
    "failed": ProviderStatus.FAILED,
}

# When a failed transaction carries no processor_response, its status says why.
DEFAULT_REASONS = {"failed": "FAILED", "cancelled": "CANCELLED"}
# Flutterwave gives no reason for a failed refund.
REFUND_FAILED = "REFUND_FAILED"

# processor_response text (case-insensitive search) → kunpay's generic reason; first match wins.
_FAILURE_TEXTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"insufficient|not enough", "NOT_ENOUGH_FUNDS"),
        (r"not found|invalid (phone|msisdn|account)|not registered", "PAYER_NOT_FOUND"),
        (r"declined|rejected|cancell?ed", "APPROVAL_REJECTED"),
        (r"timed? ?out|expired", "EXPIRED"),
        (r"limit", "PAYER_LIMIT_REACHED"),
        (r"not (permitted|allowed)", "NOT_ALLOWED"),
        (r"internal", "INTERNAL_PROCESSING_ERROR"),
        (r"unavailable", "SERVICE_UNAVAILABLE"),
        (r"unable to process|could not (be )?process", "COULD_NOT_PERFORM_TRANSACTION"),
    )
)
_NOT_FOUND = re.compile(r"\bno\b.*\bfound\b|\bnot found\b", re.IGNORECASE)
_NOT_CODE = re.compile(r"[^A-Z0-9]+")
MAX_CODE = 64


class UnknownStatus(ValueError):
    pass


class Mismatch(ValueError):
    """The answer describes a movement other than the one we asked about."""


class _FlwModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ChargeBody(_FlwModel):
    """POST /v3/charges?type=mobile_money_franco."""

    tx_ref: str = Field(min_length=1)
    # A decimal string, exactly as Flutterwave's own SDK samples send it: no float ever.
    amount: str
    currency: str
    country: str
    email: str = Field(min_length=3)
    phone_number: str
    network: str | None = None


class RefundBody(_FlwModel):
    """POST /v3/transactions/{id}/refund."""

    amount: str
    comments: str | None = None


class Envelope(_FlwModel):
    """Every v3 answer: ``status`` "success" or "error", a message, and data."""

    status: str
    message: str | None = None
    data: Any = None


class Created(_FlwModel):
    """``data`` of a charge or refund answer: the id to look it up by later."""

    id: int | str
    tx_ref: str | None = None


class TransactionData(_FlwModel):
    """``data`` of a verify answer (and of a charge webhook)."""

    id: int | str
    tx_ref: str
    flw_ref: str | None = None
    amount: Decimal
    currency: str
    status: str
    processor_response: str | None = None


class RefundData(_FlwModel):
    """``data`` of a refund answer or a refund lookup."""

    id: int | str
    # The refunded transaction: "tx_id" in the refund answer, "transaction_id" in the list.
    tx_id: int | str | None = Field(None, validation_alias=AliasChoices("tx_id", "transaction_id"))
    flw_ref: str | None = None
    amount_refunded: Decimal
    status: str


def charge_body(
    *,
    tx_ref: str,
    amount: Decimal,
    currency: str,
    country: str,
    email: str,
    msisdn: str,
    network: str | None,
) -> ChargeBody:
    return ChargeBody(
        tx_ref=tx_ref,
        amount=format_amount(amount, currency),
        currency=currency,
        country=country,
        email=email,
        phone_number=msisdn,
        network=network,
    )


def refund_body(*, amount: Decimal, currency: str, comments: str | None) -> RefundBody:
    return RefundBody(amount=format_amount(amount, currency), comments=comments or None)


def failure_reason(processor_response: str | None, status: str) -> str:
    """kunpay's reason for a failed transaction."""
    text = (processor_response or "").strip()
    for pattern, reason in _FAILURE_TEXTS:
        if pattern.search(text):
            return reason
    return error_code(text) or DEFAULT_REASONS.get(status, status.upper())


def error_code(message: str | None) -> str:
    """A stable code from a Flutterwave message: "Invalid phone number" → INVALID_PHONE_NUMBER.
    Empty when there is no message."""
    return _NOT_CODE.sub("_", (message or "").upper()).strip("_")[:MAX_CODE].rstrip("_")


def is_not_found(message: str | None) -> bool:
    """Whether an error message says Flutterwave has no such transaction or refund (as in
    "No transaction was found for this id")."""
    return bool(message) and _NOT_FOUND.search(message or "") is not None


def _mismatches(expected: Mapping[str, object], got: Mapping[str, object]) -> list[str]:
    return [
        f"{key} {got[key]!r} is not {want!r}" for key, want in expected.items() if got[key] != want
    ]


def lookup_from_transaction(
    data: TransactionData, *, reference: str, amount: Decimal, currency: str
) -> Lookup:
    """The verify answer for our charge ``reference`` of ``amount`` ``currency``."""
    problems = _mismatches(
        {"tx_ref": reference, "amount": amount, "currency": currency},
        {"tx_ref": data.tx_ref, "amount": data.amount, "currency": data.currency},
    )
    if problems:
        raise Mismatch(f"Flutterwave transaction {data.id} is not ours: {'; '.join(problems)}")
    mapped = STATUS_MAP.get(data.status)
    if mapped is None:
        raise UnknownStatus(f"Flutterwave transaction status {data.status!r} is not one we know")
    reason = (
        failure_reason(data.processor_response, data.status)
        if mapped is ProviderStatus.FAILED
        else None
    )
    return Lookup(
        found=True,
        status=mapped,
        reason=reason,
        provider_status=data.status,
        provider_transaction_id=data.flw_ref,
        handle=str(data.id),
    )


def lookup_from_refund(data: RefundData, *, amount: Decimal, original_id: str | None) -> Lookup:
    """A refund's state; it must be of ``amount`` and, when known, of transaction
    ``original_id``."""
    expected: dict[str, object] = {"amount_refunded": amount}
    got: dict[str, object] = {"amount_refunded": data.amount_refunded}
    if original_id is not None and data.tx_id is not None:
        expected["tx_id"], got["tx_id"] = original_id, str(data.tx_id)
    problems = _mismatches(expected, got)
    if problems:
        raise Mismatch(f"Flutterwave refund {data.id} is not ours: {'; '.join(problems)}")
    mapped = REFUND_STATUS_MAP.get(data.status)
    if mapped is None:
        raise UnknownStatus(f"Flutterwave refund status {data.status!r} is not one we know")
    return Lookup(
        found=True,
        status=mapped,
        reason=REFUND_FAILED if mapped is ProviderStatus.FAILED else None,
        provider_status=data.status,
        provider_transaction_id=data.flw_ref,
        handle=str(data.id),
    )


# -- webhooks ---------------------------------------------------------------------------------


def webhook_signature(raw_body: bytes, secret_hash: str) -> str:
    """``flutterwave-signature``: base64 of HMAC-SHA256 of the raw body, keyed by the dashboard
    secret hash."""
    digest = hmac.new(secret_hash.encode(), raw_body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def webhook_is_authentic(headers: Mapping[str, str], raw_body: bytes, secret_hash: str) -> bool:
    """Either header proves the sender knows the secret hash: the newer ``flutterwave-signature``
    or the legacy ``verif-hash`` (the hash itself). Compared in constant time."""
    if not secret_hash:
        return False
    lowered = {key.lower(): value for key, value in headers.items()}
    signature = lowered.get("flutterwave-signature")
    if signature is not None and hmac.compare_digest(
        signature.encode(), webhook_signature(raw_body, secret_hash).encode()
    ):
        return True
    legacy = lowered.get("verif-hash")
    return legacy is not None and hmac.compare_digest(legacy.encode(), secret_hash.encode())
