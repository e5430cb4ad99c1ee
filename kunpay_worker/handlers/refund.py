"""``refund``: reserve the amount on the original, take in, send (DESIGN.md §5 Refunds)."""

from __future__ import annotations

from kunpay_sdk.contracts import RefundCommand
from kunpay_worker.engine import Engine
from kunpay_worker.handlers.common import proceed
from kunpay_worker.handlers.permissions import amount_refusal, refund_refusal
from kunpay_worker.providers.base import Capability
from kunpay_worker.providers.registry import BACKENDS, backend_rejection
from kunpay_worker.settings import Settings
from kunpay_worker.storage.intake import RefundSupport, take_in_refund

__all__ = ["handle"]


async def handle(command: RefundCommand, app: str, engine: Engine, settings: Settings) -> None:
    support = RefundSupport(
        rejection=lambda backend: (
            refund_refusal(settings, app) or backend_rejection(settings, backend, Capability.REFUND)
        ),
        amount_refusal=lambda amount: amount_refusal(settings, app, amount),
        partial=lambda backend: (
            backend in BACKENDS
            and Capability.PARTIAL_REFUND in BACKENDS[backend].available(settings)
        ),
    )
    intake = await take_in_refund(
        command, app=app, support=support, plan=engine.plan, claim=engine.intake_claim
    )
    await proceed(intake, engine)
