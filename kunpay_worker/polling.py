"""Poll messages: one scheduled status check of a PENDING transaction.

A poll message carries the transaction id and the ``poll_seq`` it was scheduled with; the row's
``poll_seq`` moves on whenever a newer check is scheduled, so a stale message is dropped and the
poll chain never forks.
"""

from __future__ import annotations

import uuid
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from kunpay_worker.engine import Engine
from kunpay_worker.messaging import Delivery, Reject, Retry

__all__ = ["PollMessage", "handle_poll"]


class PollMessage(BaseModel):
    """A scheduled check (with the ``poll_seq`` it was scheduled with), or a check a provider
    callback asked for (``check="now"``, no place in the poll chain)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    transaction_id: uuid.UUID
    poll_seq: int | None = None
    check: Literal["now"] | None = None


async def handle_poll(delivery: Delivery, *, engine: Engine) -> None:
    try:
        poll = PollMessage.model_validate_json(delivery.message.body)
    except PydanticValidationError as exc:
        raise Reject("malformed", str(exc)[:1000]) from exc
    if poll.check is None and poll.poll_seq is None:
        raise Reject("malformed", "a poll message needs poll_seq or check")
    structlog.contextvars.bind_contextvars(
        transaction_id=str(poll.transaction_id), poll_seq=poll.poll_seq, attempt=delivery.attempt
    )
    try:
        if poll.check == "now":
            checked = await engine.check_now(poll.transaction_id)
        elif poll.poll_seq is not None:
            await engine.check(poll.transaction_id, poll.poll_seq)
            checked = True
    except Exception as exc:
        # A lost poll strands a PENDING transaction: retry it, however long.
        raise Retry(f"{type(exc).__name__}: {exc}", keep_trying=True) from exc
    finally:
        structlog.contextvars.clear_contextvars()
    if not checked:
        # Bounded by the send: once its answer is recorded, the check happens.
        raise Retry("the request is still being sent", keep_trying=True)
