"""What every backend offers, as a Protocol, and the values that cross it.

A backend is one provider API (``MTN_MOMO``, ``PAWAPAY``, ``FLUTTERWAVE``, ``ORANGE_MP``). The
engine drives every backend the same way (DESIGN.md §5): it builds a :class:`MoneyRequest` from
the transaction row, asks the backend to ``send`` it (after ``prepare`` for backends whose
provider hands out the lookup key first, and ``preflight`` checks for payouts), and later to
``lookup`` it. Backends raise only :mod:`kunpay_worker.providers.errors`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import aiohttp

from kunpay_sdk.contracts import TransactionType

if TYPE_CHECKING:
    from kunpay_worker.providers.http import CircuitBreaker, ProviderHttp
    from kunpay_worker.settings import Settings

__all__ = [
    "AccountHolder",
    "AttemptRecord",
    "AttemptRecorder",
    "Backend",
    "BackendBase",
    "Balance",
    "Capability",
    "Lookup",
    "MoneyRequest",
    "ProviderStatus",
    "SendReceipt",
    "SendResult",
    "mask_payload",
    "mask_text",
]


class Capability(StrEnum):
    """What a backend can do (PROVIDERS.md capability table)."""

    COLLECT = "collect"
    DISBURSE = "disburse"
    REFUND = "refund"
    PARTIAL_REFUND = "partial_refund"
    BALANCE = "balance"
    ACCOUNT_CHECK = "account_check"


# Which capability a transaction type needs.
CAPABILITY_FOR: dict[TransactionType, Capability] = {
    TransactionType.COLLECTION: Capability.COLLECT,
    TransactionType.DISBURSEMENT: Capability.DISBURSE,
    TransactionType.REFUND: Capability.REFUND,
}


class ProviderStatus(StrEnum):
    """A provider status, mapped. Every backend maps each of its statuses to exactly one."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class SendResult(StrEnum):
    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"  # the provider already had this reference: the first send landed


@dataclass(frozen=True, slots=True)
class MoneyRequest:
    """One money movement as the backend sees it, built from the transaction row."""

    kind: TransactionType
    transaction_id: str
    # Our fresh uuid4 for this movement, stored before any call: MTN X-Reference-Id, PawaPay
    # depositId/payoutId/refundId, Flutterwave tx_ref, Orange orderId.
    reference: str
    amount: Decimal
    currency: str
    # Country code and number, no '+': the payer of a collection, the payee of a payout, the
    # original payer of a refund.
    msisdn: str
    # "MTN" or "ORANGE": PawaPay's provider code and Flutterwave's network come from it.
    operator: str
    message: str
    callback_url: str | None = None
    # An id the provider assigned and we stored: Orange's payToken (from prepare()), the
    # Flutterwave charge or refund id (from a send or lookup answer).
    handle: str | None = None
    # Refunds: the payment being refunded, as the provider knows it.
    original_reference: str | None = None
    original_handle: str | None = None
    original_amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """The provider took the request (or already had it)."""

    result: SendResult
    # A provider id learned from the answer, stored as the transaction's handle.
    handle: str | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """The provider's view of a reference. ``found=False``: the provider never registered it."""

    found: bool
    status: ProviderStatus | None = None
    reason: str | None = None
    provider_status: str | None = None
    provider_transaction_id: str | None = None
    handle: str | None = None


@dataclass(frozen=True, slots=True)
class Balance:
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class AccountHolder:
    """What a provider says about a number. ``active`` is None when it cannot tell."""

    active: bool | None
    operator: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP exchange with a provider, already masked, for the provider_attempts table."""

    backend: str
    operation: str
    method: str
    url: str
    transaction_id: str | None
    request_body: Any
    response_status: int | None
    response_body: str | None
    error: str | None
    duration_ms: int
    extra: dict[str, Any] = field(default_factory=dict)


AttemptRecorder = Callable[[AttemptRecord], Awaitable[None]]


class Backend(Protocol):
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]
    # The operators whose numbers it reaches ("MTN", "ORANGE").
    operators: ClassVar[frozenset[str]]
    # Whether sending the same reference twice is harmless (the provider de-duplicates), which
    # decides whether a send with an unknown outcome may ever be repeated (DESIGN.md §5).
    dedupes_by_reference: ClassVar[bool]
    # Whether the provider hands out the lookup key before the money request (Orange's
    # payToken): then prepare() runs first and its answer is committed before send().
    needs_prepare: ClassVar[bool]

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None,
    ) -> Self: ...

    @classmethod
    def configuration_problems(cls, settings: Settings) -> list[str]:
        """What stops this backend from working with these settings (missing credentials)."""
        ...

    @classmethod
    def currencies(cls, settings: Settings) -> list[str]:
        """The currencies this backend accepts in the configured environment."""
        ...

    @classmethod
    def available(cls, settings: Settings) -> frozenset[Capability]:
        """What it can do with these settings (capabilities whose credentials are set)."""
        ...

    async def prepare(self, request: MoneyRequest) -> str:
        """Get the provider's lookup key for a request before sending it (needs_prepare)."""
        ...

    async def preflight(self, request: MoneyRequest) -> str | None:
        """Checks before a payout; a reason to fail it with nothing sent, or None to go on."""
        ...

    async def send(self, request: MoneyRequest) -> SendReceipt: ...

    async def lookup(self, request: MoneyRequest) -> Lookup: ...

    async def balance(self) -> Balance: ...

    async def account_holder(self, msisdn: str, operator: str) -> AccountHolder: ...

    def limit(
        self, *, max_concurrent: int, slot_wait: float, breaker: CircuitBreaker | None
    ) -> None:
        """Bound its calls in flight and guard them with a circuit breaker."""
        ...

    @property
    def circuit(self) -> str:
        """The circuit breaker's state: closed, open or half-open."""
        ...


class BackendBase:
    """Defaults for what a backend does not do; capabilities keep the engine from asking."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    operators: ClassVar[frozenset[str]] = frozenset()
    needs_prepare: ClassVar[bool] = False
    _http: ProviderHttp

    def limit(
        self, *, max_concurrent: int, slot_wait: float, breaker: CircuitBreaker | None
    ) -> None:
        self._http.limit(max_concurrent=max_concurrent, slot_wait=slot_wait, breaker=breaker)

    @property
    def circuit(self) -> str:
        breaker = self._http.breaker
        return breaker.state if breaker is not None else "closed"

    @classmethod
    def available(cls, settings: Settings) -> frozenset[Capability]:
        return cls.capabilities

    async def prepare(self, request: MoneyRequest) -> str:
        raise NotImplementedError(f"{self.name} has no prepare step")

    async def preflight(self, request: MoneyRequest) -> str | None:
        return None

    async def balance(self) -> Balance:
        raise NotImplementedError(f"{self.name} has no balance")

    async def account_holder(self, msisdn: str, operator: str) -> AccountHolder:
        raise NotImplementedError(f"{self.name} has no account check")


_PHONE_KEYS = re.compile(
    r"(?i)(msisdn|phone|partyid|payer|payee|subscriber|channeluser|recipient|customer)"
)
_SECRET_KEYS = re.compile(r"(?i)(pin|secret|password|token|api_?key|authorization|x-auth)")
# Eight to fifteen digits standing alone (not inside an id such as a UUID).
_LONG_DIGITS = re.compile(r"(?<![\w-])\+?\d{8,15}(?![\w-])")


def mask_text(value: str) -> str:
    """Mask every run of eight to fifteen digits (phone numbers) to its last three."""
    return _LONG_DIGITS.sub(lambda m: "*" * (len(m.group()) - 3) + m.group()[-3:], value)


def mask_payload(value: Any, key: str = "") -> Any:
    """Mask secrets entirely and phone numbers to their last three digits, recursively."""
    if isinstance(value, dict):
        return {k: mask_payload(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_payload(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEYS.search(key):
            return "***"
        if key and _PHONE_KEYS.search(key):
            return mask_text(value)
    return value
