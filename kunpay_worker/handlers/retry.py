"""``retry``: recheck the FAILED original at the provider, then collect it again as a new
transaction with a new provider reference (DESIGN.md §3)."""

from __future__ import annotations

from kunpay_sdk.contracts import RetryCommand
from kunpay_worker.engine import Engine
from kunpay_worker.handlers.common import proceed
from kunpay_worker.handlers.permissions import amount_refusal
from kunpay_worker.providers.base import Capability
from kunpay_worker.providers.registry import backend_rejection
from kunpay_worker.settings import Settings
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.intake import take_in_retry
from kunpay_worker.storage.models import Transaction

__all__ = ["handle"]


async def handle(command: RetryCommand, app: str, engine: Engine, settings: Settings) -> None:
    original = await repo.load(command.original_transaction_id)
    if original is not None and original.app == app:
        # It may have completed late: then the retry is refused and nobody pays twice.
        await engine.recheck_before_retry(original.id)

    def send_wait(original: Transaction) -> float:
        # Orange may refuse a repeat debit of the same number and amount for a while.
        return settings.orange_mp.retry_wait if original.backend == "ORANGE_MP" else 0.0

    intake = await take_in_retry(
        command,
        app=app,
        rejection=lambda original: (
            amount_refusal(settings, app, original.amount)
            or backend_rejection(settings, original.backend, Capability.COLLECT)
        ),
        send_wait=send_wait,
        plan=engine.plan,
        claim=engine.intake_claim,
    )
    await proceed(intake, engine)
