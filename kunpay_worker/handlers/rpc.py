"""Requests on ``kunpay.rpc`` (get), answered through direct reply-to."""

from __future__ import annotations

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError as PydanticValidationError

from kunpay_sdk.contracts import RpcReply, RpcRequest
from kunpay_worker.messaging import Publisher
from kunpay_worker.storage import repository as repo

__all__ = ["handle_rpc"]

log = structlog.get_logger("kunpay.rpc")


async def answer(message: AbstractIncomingMessage) -> RpcReply:
    app = message.user_id
    if not app:
        return RpcReply(ok=False, error_code="forbidden", error="request without user_id")
    try:
        request = RpcRequest.model_validate_json(message.body)
    except PydanticValidationError as exc:
        return RpcReply(ok=False, error_code="bad_request", error=str(exc)[:1000])
    tx = await repo.load(request.transaction_id)
    if tx is None or tx.app != app:
        # Another app's transaction does not exist, as far as this app can tell.
        return RpcReply(ok=False, error_code="not_found", error=str(request.transaction_id))
    return RpcReply(ok=True, transaction=repo.snapshot(tx), final_event=await repo.final_event(tx))


async def handle_rpc(message: AbstractIncomingMessage, *, publisher: Publisher) -> None:
    try:
        try:
            reply = await answer(message)
        except Exception as exc:
            log.exception("request failed")
            reply = RpcReply(ok=False, error_code="unavailable", error=type(exc).__name__)
        if message.reply_to:
            await publisher.publish(
                "",
                message.reply_to,
                aio_pika.Message(
                    body=reply.model_dump_json().encode(),
                    content_type="application/json",
                    correlation_id=message.correlation_id,
                ),
                mandatory=False,  # the caller may have given up and gone
            )
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
        log.warning("could not answer a request", error=repr(exc))
    finally:
        try:
            await message.ack()
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.debug("could not ack a request", error=repr(exc))
