"""Backend name → class. Adding a backend touches its own package and one line here."""

from __future__ import annotations

import aiohttp

from kunpay_worker.providers.base import AttemptRecorder, CollectionBackend
from kunpay_worker.providers.mtn_momo.client import MtnMomoClient
from kunpay_worker.settings import Settings

__all__ = ["BACKENDS", "build_backends", "configuration_problems", "rejection_for"]

# The implemented backends; settings may name others (PROVIDERS.md), which start-up refuses.
BACKENDS: dict[str, type[CollectionBackend]] = {
    MtnMomoClient.name: MtnMomoClient,
}


def build_backends(
    settings: Settings,
    session: aiohttp.ClientSession,
    recorder: AttemptRecorder | None,
) -> dict[str, CollectionBackend]:
    """One client per backend a provider key maps to, sharing the worker's HTTP session."""
    timeout = aiohttp.ClientTimeout(
        total=settings.http.total_timeout, connect=settings.http.connect_timeout
    )
    return {
        name: BACKENDS[name].from_settings(settings, session, timeout=timeout, recorder=recorder)
        for name in sorted(settings.enabled_backends())
    }


def configuration_problems(settings: Settings) -> list[str]:
    """What stops the configured provider keys from working; empty when all is well."""
    problems = []
    for key, backend in sorted(settings.providers.items()):
        if backend not in BACKENDS:
            problems.append(f"{key} → {backend}: this backend is not implemented yet")
    for backend in sorted(settings.enabled_backends() & BACKENDS.keys()):
        problems += BACKENDS[backend].configuration_problems(settings)
    return problems


def rejection_for(settings: Settings, provider: str, operation: str, currency: str) -> str | None:
    """Why this worker cannot do ``operation`` for ``provider`` in ``currency``, or None."""
    backend = settings.providers.get(provider)
    if backend is None or backend not in BACKENDS:
        configured = ", ".join(sorted(settings.providers)) or "none"
        return (
            f"provider key {provider} is not configured on this worker (configured: {configured})"
        )
    cls = BACKENDS[backend]
    if operation not in cls.capabilities:
        able = sorted(
            key
            for key, name in settings.providers.items()
            if name in BACKENDS and operation in BACKENDS[name].capabilities
        )
        return (
            f"{provider} ({backend}) cannot {operation}; provider keys that can: "
            f"{', '.join(able) or 'none'}"
        )
    accepted = cls.currencies(settings)
    if currency not in accepted:
        return f"{backend} here accepts {', '.join(accepted)}, not {currency}"
    return None
