"""Prometheus metrics, served on ``/metrics`` by the worker's HTTP server.

What is here: PENDING and stale transactions (counted from the database at each scrape, so
every worker reports the same figures) and each backend's circuit breaker state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

import structlog
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kunpay_worker.storage import repository as repo

__all__ = ["CIRCUIT_STATES", "Metrics"]

log = structlog.get_logger("kunpay.metrics")

CIRCUIT_STATES = ("closed", "half-open", "open")


class _Circuits(Collector):
    """``kunpay_provider_circuit_state{backend, state}``: 1 for each backend's current state."""

    def __init__(self, circuits: Callable[[], Mapping[str, str]]) -> None:
        self._circuits = circuits

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kunpay_provider_circuit_state",
            "Circuit breaker state per backend: 1 for the current state (closed, half-open, "
            "open), 0 for the others",
            labels=["backend", "state"],
        )
        for backend, current in sorted(self._circuits().items()):
            for state in CIRCUIT_STATES:
                family.add_metric([backend, state], 1.0 if state == current else 0.0)
        yield family


class Metrics:
    def __init__(self, circuits: Callable[[], Mapping[str, str]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pending = Gauge(
            "kunpay_pending_transactions",
            "Transactions still PENDING (stale ones included)",
            registry=self.registry,
        )
        self.stale = Gauge(
            "kunpay_stale_transactions",
            "PENDING transactions the janitor gave up checking: settle each with "
            "`kunpay-worker resolve`",
            registry=self.registry,
        )
        self.registry.register(_Circuits(circuits))

    async def render(self) -> bytes:
        """The exposition text, with the counts read from the database now (the last figures
        are kept when the database does not answer within 2 s)."""
        try:
            async with asyncio.timeout(2):
                pending, stale = await repo.pending_counts()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the database
            log.warning("could not count pending transactions for /metrics", error=repr(exc))
        else:
            self.pending.set(pending)
            self.stale.set(stale)
        text: bytes = generate_latest(self.registry)
        return text
