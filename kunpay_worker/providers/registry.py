"""Backend name → client. Adding a backend touches its own package and one line here."""

from __future__ import annotations

import aiohttp

from kunpay_worker.providers.base import AttemptRecorder, CollectionBackend
from kunpay_worker.providers.mtn_momo.client import MtnMomoClient
from kunpay_worker.settings import Settings

__all__ = ["CAPABILITIES", "build_backends"]

# What each backend can do, per PROVIDERS.md. Only implemented backends appear here.
CAPABILITIES: dict[str, frozenset[str]] = {
    "MTN_MOMO": frozenset({"collect"}),
}


def build_backends(
    settings: Settings,
    session: aiohttp.ClientSession,
    recorder: AttemptRecorder | None,
) -> dict[str, CollectionBackend]:
    timeout = aiohttp.ClientTimeout(
        total=settings.http.total_timeout, connect=settings.http.connect_timeout
    )
    backends: dict[str, CollectionBackend] = {}
    for name in sorted(settings.enabled_backends()):
        if name == "MTN_MOMO":
            backends[name] = MtnMomoClient(
                settings.mtn_momo, session, timeout=timeout, recorder=recorder
            )
    return backends


def configuration_problems(settings: Settings) -> list[str]:
    """What stops the configured provider keys from working; empty when all is well."""
    problems = []
    for key, backend in sorted(settings.providers.items()):
        if backend not in CAPABILITIES:
            problems.append(f"{key} → {backend}: this backend is not implemented yet")
    if "MTN_MOMO" in settings.enabled_backends():
        missing = settings.mtn_momo.collection.missing()
        if missing:
            problems.append(
                "MTN_MOMO collection credentials missing: "
                + ", ".join(f"KUNPAY_MTN_MOMO__COLLECTION__{m.upper()}" for m in missing)
            )
    return problems


def backend_currencies(settings: Settings, backend: str) -> list[str]:
    if backend == "MTN_MOMO":
        return settings.mtn_momo.currencies
    return []


def rejection_for(settings: Settings, provider: str, operation: str, currency: str) -> str | None:
    """Why this worker cannot do ``operation`` for ``provider`` in ``currency``, or None."""
    backend = settings.providers.get(provider)
    if backend is None:
        configured = ", ".join(sorted(settings.providers)) or "none"
        return (
            f"provider key {provider} is not configured on this worker (configured: {configured})"
        )
    if operation not in CAPABILITIES.get(backend, frozenset()):
        able = sorted(
            key
            for key, name in settings.providers.items()
            if operation in CAPABILITIES.get(name, frozenset())
        )
        return (
            f"{provider} ({backend}) cannot {operation}; provider keys that can: "
            f"{', '.join(able) or 'none'}"
        )
    accepted = backend_currencies(settings, backend)
    if currency not in accepted:
        return f"{backend} here accepts {', '.join(accepted)}, not {currency}"
    return None
