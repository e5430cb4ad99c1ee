"""What every backend offers, as a Protocol, and the values that cross it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import aiohttp

if TYPE_CHECKING:
    from kunpay_worker.settings import Settings

__all__ = [
    "AttemptRecord",
    "AttemptRecorder",
    "CollectionBackend",
    "CollectionRequest",
    "Lookup",
    "ProviderStatus",
    "SendResult",
    "mask_payload",
    "mask_text",
]


class ProviderStatus(StrEnum):
    """A provider status, mapped. Every backend maps each of its statuses to exactly one."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class SendResult(StrEnum):
    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"  # the provider already had this reference: the first send landed


@dataclass(frozen=True, slots=True)
class CollectionRequest:
    transaction_id: str
    reference: str  # uuid4, stored before this call
    amount: Decimal
    currency: str
    msisdn: str  # country code + number, no '+'
    message: str
    callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """The provider's view of a reference. ``found=False``: the provider never registered it."""

    found: bool
    status: ProviderStatus | None = None
    reason: str | None = None
    provider_status: str | None = None
    provider_transaction_id: str | None = None


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


class CollectionBackend(Protocol):
    name: ClassVar[str]
    # Operations this backend can do ("collect", later "disburse", "refund", ...).
    capabilities: ClassVar[frozenset[str]]
    # Whether sending the same reference twice is harmless (the provider de-duplicates), which
    # decides whether a send with an unknown outcome may ever be repeated (DESIGN.md §5).
    dedupes_by_reference: ClassVar[bool]

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

    async def request_collection(self, request: CollectionRequest) -> SendResult: ...

    async def lookup_collection(self, reference: str, transaction_id: str | None) -> Lookup: ...


_PHONE_KEYS = re.compile(r"(?i)(msisdn|phone|partyid|payer|payee)")
_SECRET_KEYS = re.compile(r"(?i)(pin|secret|password|token|api_?key|authorization)")
_LONG_DIGITS = re.compile(r"(?<![\w-])\+?\d{8,15}(?![\w-])")


def mask_text(value: str) -> str:
    """Mask every run of eight or more digits (phone numbers) to its last three."""
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
