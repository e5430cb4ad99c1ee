"""What can go wrong talking to a provider. Callers never see ``aiohttp`` exceptions::

ProviderError                      provider, http_status, provider_code, reference
├── ProviderUnavailable            could not get a usable answer: retry later. For a money
│   │                              request the outcome is UNKNOWN (it may have been processed)
│   └── ProviderNotReached         ...and the request certainly took no effect (connection
│       │                          refused, token failure, 401, 429): safe to send again
│       ├── ProviderAuthFailed     credentials refused even after a token refresh
│       └── ProviderThrottled      429; ``retry_after`` seconds when the provider said
│           └── ProviderCircuitOpen  kept failing: calls paused for a while, nothing sent
├── ProviderRefused                the provider answered no: final (``provider_code`` = reason)
└── ProviderResponseInvalid        an answer we cannot read. For a money request the outcome
                                   is UNKNOWN, like ProviderUnavailable
"""

from __future__ import annotations

__all__ = [
    "ProviderAuthFailed",
    "ProviderCircuitOpen",
    "ProviderError",
    "ProviderNotReached",
    "ProviderRefused",
    "ProviderResponseInvalid",
    "ProviderThrottled",
    "ProviderUnavailable",
]


class ProviderError(Exception):
    def __init__(
        self,
        message: str,
        *,
        provider: str,
        http_status: int | None = None,
        provider_code: str | None = None,
        reference: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.http_status = http_status
        self.provider_code = provider_code
        self.reference = reference

    def __str__(self) -> str:
        parts = [super().__str__(), f"provider={self.provider}"]
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.provider_code:
            parts.append(f"code={self.provider_code}")
        return " ".join(parts)


class ProviderUnavailable(ProviderError):
    pass


class ProviderNotReached(ProviderUnavailable):
    pass


class ProviderAuthFailed(ProviderNotReached):
    pass


class ProviderThrottled(ProviderNotReached):
    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ProviderCircuitOpen(ProviderThrottled):
    pass


class ProviderRefused(ProviderError):
    pass


class ProviderResponseInvalid(ProviderError):
    pass
