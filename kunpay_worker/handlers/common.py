"""What every command handler does after the intake."""

from __future__ import annotations

import structlog

from kunpay_worker.engine import Engine
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.intake import Intake

log = structlog.get_logger("kunpay.commands")


async def proceed(intake: Intake, engine: Engine) -> None:
    """Hand a taken-in command to the engine and write the canonical line for it."""
    engine.notify()
    tx = intake.transaction
    if tx is not None:
        await engine.after_intake(tx)
        tx = await repo.load(tx.id)
    log.info(
        "command handled",
        intake=str(intake.outcome) if intake.outcome else "REDELIVERY",
        status=str(tx.status) if tx else "REJECTED",
        initiation=str(tx.initiation) if tx else None,
        provider=tx.provider if tx else None,
        backend=tx.backend if tx else None,
        reason=tx.failure_reason if tx and tx.status.value == "REJECTED" else None,
    )
