"""What every command handler does after the intake."""

from __future__ import annotations

import structlog

from kunpay_worker.engine import Engine
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.intake import Intake

log = structlog.get_logger("kunpay.commands")

# What transactions.failure_reason, transaction_statuses.reason and inbox.reason hold.
MAX_REASON = 500


# payment_types.short_name holds this many characters.
SHORT_NAME_LENGTH = 40


def can_match(value: str, max_length: int) -> bool:
    """Whether ``value`` can equal a column's value: not longer than the column (a lookup with
    a longer one fails the ORM's length check) and without NUL (which PostgreSQL refuses)."""
    return len(value) <= max_length and "\x00" not in value


def bounded(reason: str) -> str:
    """A rejection reason that fits its columns: one quoting an app's input (a 200-character
    provider key or payment type, printed with escapes) can be longer."""
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


async def proceed(intake: Intake, engine: Engine) -> None:
    """Hand a taken-in command to the engine and write the canonical line for it."""
    engine.notify()
    tx = intake.transaction
    if tx is not None:
        # The row as the engine left it; read again only when the engine cannot say.
        tx = await engine.after_intake(tx, claimed=intake.claimed) or await repo.load(tx.id)
    log.info(
        "command handled",
        intake=str(intake.outcome) if intake.outcome else "REDELIVERY",
        status=str(tx.status) if tx else "REJECTED",
        initiation=str(tx.initiation) if tx else None,
        provider=tx.provider if tx else None,
        backend=tx.backend if tx else None,
        reason=tx.failure_reason if tx and tx.status.value == "REJECTED" else None,
    )
