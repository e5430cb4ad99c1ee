"""Backend name → class. Adding a backend touches its own package and one line here."""

from __future__ import annotations

import aiohttp

from kunpay_worker.providers.base import AttemptRecorder, Backend, Capability
from kunpay_worker.providers.flutterwave.client import FlutterwaveClient
from kunpay_worker.providers.http import CircuitBreaker
from kunpay_worker.providers.mtn_momo.client import MtnMomoClient
from kunpay_worker.providers.orange_mp.client import OrangeMpClient
from kunpay_worker.providers.pawapay.client import PawapayClient
from kunpay_worker.settings import Settings

__all__ = [
    "BACKENDS",
    "backend_rejection",
    "build_backends",
    "configuration_problems",
    "rejection_for",
]

# Every backend (settings.BACKENDS names the same four).
BACKENDS: dict[str, type[Backend]] = {
    MtnMomoClient.name: MtnMomoClient,
    PawapayClient.name: PawapayClient,
    FlutterwaveClient.name: FlutterwaveClient,
    OrangeMpClient.name: OrangeMpClient,
}


def build_backends(
    settings: Settings,
    session: aiohttp.ClientSession,
    recorder: AttemptRecorder | None,
) -> dict[str, Backend]:
    """One client per backend a provider key maps to, sharing the worker's HTTP session."""
    timeout = aiohttp.ClientTimeout(
        total=settings.http.total_timeout, connect=settings.http.connect_timeout
    )
    backends: dict[str, Backend] = {}
    # A send must end inside 0.9 of its lease (engine): a wait for a call slot is bounded so
    # that it and one call fit, and a send that waited too long fails as "not sent" (tried
    # again later), not as "outcome unknown".
    slot_wait = max(settings.send_lease * 0.9 - settings.http.total_timeout - 1.0, 0.5)
    for name in sorted(settings.enabled_backends()):
        backend = BACKENDS[name].from_settings(
            settings, session, timeout=timeout, recorder=recorder
        )
        backend.limit(
            max_concurrent=settings.http.max_concurrent_calls,
            slot_wait=slot_wait,
            breaker=CircuitBreaker(
                name,
                failures=settings.http.breaker_failures,
                cooldown=settings.http.breaker_cooldown,
            ),
        )
        backends[name] = backend
    return backends


def configuration_problems(settings: Settings) -> list[str]:
    """What stops the configured provider keys from working; empty when all is well."""
    problems = []
    for backend in sorted(settings.enabled_backends()):
        problems += BACKENDS[backend].configuration_problems(settings)
    return problems


def _keys_that_can(settings: Settings, capability: Capability) -> str:
    able = sorted(
        key
        for key, name in settings.providers.items()
        if name in BACKENDS and capability in BACKENDS[name].available(settings)
    )
    return ", ".join(able) or "none configured"


def backend_rejection(
    settings: Settings, backend: str | None, capability: Capability
) -> str | None:
    """Why ``backend`` cannot do ``capability`` here (naming the provider keys that can), or
    None. For refunds and retries, which go through the original payment's backend."""
    if backend is None or backend not in BACKENDS or backend not in settings.enabled_backends():
        return f"UNSUPPORTED: backend {backend} is not configured on this worker"
    if capability not in BACKENDS[backend].available(settings):
        return (
            f"UNSUPPORTED: {backend} cannot {capability} here; provider keys that can: "
            f"{_keys_that_can(settings, capability)}"
        )
    return None


def rejection_for(
    settings: Settings, provider: str, capability: Capability, currency: str, operator: str
) -> str | None:
    """Why this worker cannot do ``capability`` for ``provider`` in ``currency`` to a number
    of ``operator``, or None."""
    backend = settings.providers.get(provider)
    if backend is None or backend not in BACKENDS:
        configured = ", ".join(sorted(settings.providers)) or "none"
        return (
            f"UNSUPPORTED: provider key {provider} is not configured on this worker "
            f"(configured: {configured})"
        )
    cls = BACKENDS[backend]
    if capability not in cls.available(settings):
        return (
            f"UNSUPPORTED: {provider} ({backend}) cannot {capability} here; "
            f"provider keys that can: {_keys_that_can(settings, capability)}"
        )
    if operator and operator not in cls.operators:
        return f"UNSUPPORTED: {provider} ({backend}) does not reach {operator} numbers"
    accepted = cls.currencies(settings)
    if currency not in accepted:
        return f"UNSUPPORTED: {backend} here accepts {', '.join(accepted)}, not {currency}"
    return None
