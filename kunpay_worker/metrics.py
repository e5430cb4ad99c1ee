"""Prometheus metrics, served on ``/metrics`` by the worker's HTTP server.

Two kinds, on two registries that :meth:`Metrics.render` puts one after the other:

- What this process did, counted as it happens on the module-level :data:`REGISTRY` (counters
  and a histogram, incremented where the work is done; they start at 0 with each process):
  commands by type and outcome (``messaging.Dispatcher``), provider calls by backend, operation
  and status with their latency, and calls not sent (``providers.http.ProviderHttp``), status
  transitions (``outbox.OutboxRelay``, see there why), messages this worker dead-lettered.
- What the database says now, read at each scrape so every worker reports the same figures, and
  each backend's circuit breaker state, on the registry of each :class:`Metrics` (so several can
  be built in one process): PENDING and stale transactions, the outbox backlog, dead letters not
  yet replayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kunpay_worker.storage import repository as repo

__all__ = [
    "CIRCUIT_STATES",
    "COMMANDS",
    "DEAD_LETTERED",
    "PROVIDER_CALLS",
    "PROVIDER_CALLS_SKIPPED",
    "PROVIDER_CALL_SECONDS",
    "REGISTRY",
    "TRANSITIONS",
    "Metrics",
]

log = structlog.get_logger("kunpay.metrics")

CIRCUIT_STATES = ("closed", "half-open", "open")

REGISTRY = CollectorRegistry(auto_describe=True)

COMMANDS = Counter(
    "kunpay_commands_total",
    "Command deliveries handled, by operation (collect, disburse, refund, retry, unknown) and "
    "outcome (handled, retried, dead_lettered, failed, requeued)",
    ["type", "outcome"],
    registry=REGISTRY,
)
PROVIDER_CALLS = Counter(
    "kunpay_provider_calls_total",
    "HTTP calls sent to a provider, by backend, operation and status (the HTTP status code, "
    "or timeout, connection_error, error)",
    ["backend", "operation", "status"],
    registry=REGISTRY,
)
PROVIDER_CALL_SECONDS = Histogram(
    "kunpay_provider_call_seconds",
    "Duration of provider HTTP calls, answered or not",
    ["backend", "operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0),
    registry=REGISTRY,
)
PROVIDER_CALLS_SKIPPED = Counter(
    "kunpay_provider_calls_skipped_total",
    "Provider calls not sent, by backend and reason (circuit_open, no_slot)",
    ["backend", "reason"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "kunpay_transitions_total",
    "Committed status transitions, by transaction type and new status, counted when the "
    "outbox relay publishes their event",
    ["type", "status"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "kunpay_dead_lettered_total",
    "Messages this worker sent to the dead-letter exchange, by reason",
    ["reason"],
    registry=REGISTRY,
)


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
    """The ``/metrics`` page: the process's counters and, read at each scrape, the database's
    counts and the circuit states ``circuits`` reports."""

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
        self.outbox_backlog = Gauge(
            "kunpay_outbox_backlog",
            "Events and poll messages committed but not yet published (outbox rows)",
            registry=self.registry,
        )
        self.dead_letters = Gauge(
            "kunpay_dead_letters",
            "Dead letters in the table not yet replayed: see `kunpay-worker dlq list`",
            registry=self.registry,
        )
        self.registry.register(_Circuits(circuits))

    async def render(self) -> bytes:
        """The exposition text, with the counts read from the database now (within 2 s in all;
        a count not read in time keeps its last figure)."""
        try:
            async with asyncio.timeout(2):
                pending, stale = await repo.pending_counts()
                self.pending.set(pending)
                self.stale.set(stale)
                self.outbox_backlog.set(await repo.outbox_backlog())
                self.dead_letters.set(await repo.unreplayed_dead_letters())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the database
            log.warning("could not count rows for /metrics", error=repr(exc))
        text: bytes = generate_latest(REGISTRY) + generate_latest(self.registry)
        return text
