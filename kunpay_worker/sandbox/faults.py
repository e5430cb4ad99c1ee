"""Provider faults the sandbox can inject on top of its magic numbers, for the fault suite and
for benchmarks: latency, 5xx bursts, answers lost after the provider accepted, malformed JSON,
duplicate-reference answers, duplicated and reordered callbacks.

Faults are drawn from a seeded random generator, so a run can be repeated. They never make the
sandbox lie about money: an error *before* the handler registers nothing, an error *after* it
keeps what was registered, and the duplicate-answer fault only applies where the real provider
de-duplicates by reference (MTN's X-Reference-Id, PawaPay's deposit/payout/refund ids).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = ["DEDUPLICATING", "Faults", "faults_middleware"]

# Initiations whose provider answers a reused reference with "duplicate" and registers nothing.
DEDUPLICATING = (
    "/collection/v1_0/requesttopay",
    "/disbursement/v1_0/transfer",
    "/disbursement/v1_0/refund",
    "/v2/deposits",
    "/v2/payouts",
    "/v2/refunds",
)
# Never faulted: the sandbox's own control routes, tokens and keys (revoke_tokens() is the
# token fault).
_SPARED = ("/_sandbox/", "/token", "/collection/token/", "/disbursement/token/", "/v2/public-key")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Faults:
    """What to inject; every rate is a probability per provider request (0 = never)."""

    latency: float = 0.0  # seconds added before every provider answer
    error_rate: float = 0.0  # 503 before the handler: nothing registered
    lost_answer_rate: float = 0.0  # the handler ran (registered); the answer comes too late
    lost_answer_seconds: float = 30.0  # how late (beyond the worker's HTTP timeout)
    malformed_rate: float = 0.0  # the handler ran; its 2xx answer's body is broken JSON
    duplicate_answer_rate: float = 0.0  # de-duplicating initiations: the answer is a replay's
    callback_copies: int = 1  # each callback is sent this many times...
    callback_jitter: float = 0.0  # ...each after a random delay up to this (reordering them)
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    def update(self, values: object) -> None:
        """Change settings in place (POST /_sandbox/faults); unknown names are refused."""
        if not isinstance(values, dict):
            raise TypeError("a JSON object of fault settings is expected")
        known = {f.name: f.type for f in fields(self) if f.name not in ("injected", "rng")}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        for name, value in values.items():
            current = getattr(self, name)
            number = type(current)(value)
            if number < 0 or (name.endswith("_rate") and number > 1):
                raise ValueError(f"{name} out of range: {value!r}")
            setattr(self, name, number)
        if "seed" in values:
            self.rng.seed(self.seed)

    def clear(self) -> None:
        """No faults (latency kept: it is a property of the provider, not a fault)."""
        self.update(
            {
                "error_rate": 0,
                "lost_answer_rate": 0,
                "malformed_rate": 0,
                "duplicate_answer_rate": 0,
                "callback_copies": 1,
                "callback_jitter": 0,
            }
        )

    def hit(self, rate: float, name: str) -> bool:
        if rate > 0 and self.rng.random() < rate:
            self.injected[name] += 1
            return True
        return False

    def callback_delays(self) -> list[float]:
        """When to send each copy of one callback, relative to now."""
        copies = max(1, self.callback_copies)
        if copies > 1:
            self.injected["duplicate_callback"] += copies - 1
        return [self.rng.uniform(0, self.callback_jitter) for _ in range(copies)]

    def as_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rng"}
        values["injected"] = dict(self.injected)
        return values


def faults_middleware(faults: Faults) -> Middleware:
    @web.middleware
    async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if any(path.startswith(p) or path.endswith(p) for p in _SPARED):
            return await handler(request)
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if faults.hit(faults.error_rate, "error_5xx"):
            return web.json_response({"message": "injected fault: service unavailable"}, status=503)
        if (
            request.method == "POST"
            and path in DEDUPLICATING
            and faults.hit(faults.duplicate_answer_rate, "duplicate_answer")
        ):
            # The request went through once and its answer was lost; the client's copy is the
            # replay the provider answers as a duplicate.
            await handler(request)
            return await handler(request)
        response = await handler(request)
        if faults.hit(faults.lost_answer_rate, "lost_answer"):
            await asyncio.sleep(faults.lost_answer_seconds)
            return response
        if response.status < 300 and faults.hit(faults.malformed_rate, "malformed_json"):
            # The provider did what it answered; only the body it sent back is broken.
            broken = b'{"status": "SUCCESSFUL", "amount":'
            return web.Response(status=200, body=broken, content_type="application/json")
        return response

    return inject
