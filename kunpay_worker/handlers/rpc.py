"""Requests on ``kunpay.rpc``, answered through direct reply-to: get, verify, list, quote,
balance, account_holder. Every request gets an answer, an error one when need be."""

from __future__ import annotations

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError as PydanticValidationError

from kunpay_sdk.contracts import (
    MAX_REF_LENGTH,
    RPC_REQUESTS,
    AccountHolderInfo,
    AccountHolderRequest,
    BalanceInfo,
    BalanceRequest,
    GetRequest,
    ListRequest,
    Quote,
    QuoteRequest,
    RpcReply,
    VerifyRequest,
)
from kunpay_sdk.errors import ValidationError
from kunpay_sdk.msisdn import parse_msisdn
from kunpay_worker.domain.fees import FeeError, gross_for
from kunpay_worker.engine import Engine
from kunpay_worker.handlers.common import SHORT_NAME_LENGTH, can_match
from kunpay_worker.handlers.permissions import balance_refusal
from kunpay_worker.messaging import Publisher
from kunpay_worker.providers.base import Capability
from kunpay_worker.providers.errors import ProviderError
from kunpay_worker.providers.registry import BACKENDS
from kunpay_worker.settings import Settings
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.models import PaymentType, Transaction

__all__ = ["handle_rpc"]

log = structlog.get_logger("kunpay.rpc")


def _error(code: str, message: str) -> RpcReply:
    return RpcReply(ok=False, error_code=code, error=message)


async def _transaction_reply(tx: Transaction) -> RpcReply:
    return RpcReply(
        ok=True, transaction=await repo.snapshot(tx), final_event=await repo.final_event(tx)
    )


class Answers:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    async def answer(self, message: AbstractIncomingMessage) -> RpcReply:
        app = message.user_id
        if not app:
            return _error("forbidden", "request without user_id")
        try:
            request = RPC_REQUESTS.validate_json(message.body)
        except PydanticValidationError as exc:
            return _error("bad_request", str(exc)[:1000])
        if isinstance(request, GetRequest):
            return await self.get(app, request)
        if isinstance(request, VerifyRequest):
            return await self.verify(app, request)
        if isinstance(request, ListRequest):
            return await self.list(app, request)
        if isinstance(request, QuoteRequest):
            return await self.quote(request)
        if isinstance(request, BalanceRequest):
            refused = balance_refusal(self.settings, app)
            if refused is not None:
                return _error("forbidden", refused)
            return await self.balance(request)
        return await self.account_holder(request)

    async def get(self, app: str, request: GetRequest) -> RpcReply:
        tx = await repo.load(request.transaction_id)
        if tx is None or tx.app != app:
            # Another app's transaction does not exist, as far as this app can tell.
            return _error("not_found", str(request.transaction_id))
        return await _transaction_reply(tx)

    async def verify(self, app: str, request: VerifyRequest) -> RpcReply:
        tx = await repo.load(request.transaction_id)
        if tx is None or tx.app != app:
            return _error("not_found", str(request.transaction_id))
        try:
            tx = await self.engine.verify(tx.id) or tx
        except ProviderError as exc:
            return _error("provider_unavailable", str(exc))
        return await _transaction_reply(tx)

    async def list(self, app: str, request: ListRequest) -> RpcReply:
        filters = (request.order_id, request.user_id)
        if any(f is not None and not can_match(f, MAX_REF_LENGTH) for f in filters):
            return RpcReply(ok=True, transactions=[])  # no stored id holds a NUL
        query = Transaction.filter(app=app)
        if request.order_id is not None:
            query = query.filter(order_id=request.order_id)
        if request.user_id is not None:
            query = query.filter(user_id=request.user_id)
        if request.status is not None:
            query = query.filter(status=request.status)
        rows = await query.order_by("-created_at").limit(request.limit)
        return RpcReply(ok=True, transactions=[await repo.snapshot(tx) for tx in rows])

    async def quote(self, request: QuoteRequest) -> RpcReply:
        row = (
            await PaymentType.get_or_none(short_name=request.payment_type)
            if can_match(request.payment_type, SHORT_NAME_LENGTH)
            else None
        )
        if row is None or not row.is_active:
            return _error("not_found", f"no active payment type {request.payment_type!r}")
        try:
            split = gross_for(request.net_amount, row.fee_schedule(), row.currency)
        except FeeError as exc:
            return _error("invalid", str(exc))
        return RpcReply(
            ok=True,
            quote=Quote(
                payment_type=row.short_name,
                currency=row.currency,
                net_amount=split.net,
                gross_amount=split.gross,
                fee_amount=split.fee,
                provider_fee=split.provider_fee,
                platform_fee=split.platform_fee,
            ),
        )

    def _backend_for(self, provider: str, capability: Capability) -> tuple[str, RpcReply | None]:
        backend = self.settings.providers.get(provider)
        if backend is None or backend not in self.engine.backends:
            return "", _error("unsupported", f"provider key {provider} is not configured")
        if capability not in BACKENDS[backend].available(self.settings):
            return "", _error("unsupported", f"{provider} ({backend}) cannot tell {capability}")
        return backend, None

    async def balance(self, request: BalanceRequest) -> RpcReply:
        backend, refused = self._backend_for(request.provider, Capability.BALANCE)
        if refused is not None:
            return refused
        try:
            balance = await self.engine.backends[backend].balance()
        except ProviderError as exc:
            return _error("provider_unavailable", str(exc))
        return RpcReply(
            ok=True,
            balance=BalanceInfo(
                provider=request.provider,
                backend=backend,
                amount=balance.amount,
                currency=balance.currency,
            ),
        )

    async def account_holder(self, request: AccountHolderRequest) -> RpcReply:
        backend, refused = self._backend_for(request.provider, Capability.ACCOUNT_CHECK)
        if refused is not None:
            return refused
        try:
            msisdn = parse_msisdn(
                request.phone_number, sandbox=self.settings.accept_sandbox_numbers
            )
        except ValidationError as exc:
            return _error("invalid", str(exc))
        try:
            holder = await self.engine.backends[backend].account_holder(
                msisdn.digits, str(msisdn.operator)
            )
        except ProviderError as exc:
            return _error("provider_unavailable", str(exc))
        return RpcReply(
            ok=True,
            account_holder=AccountHolderInfo(
                provider=request.provider,
                backend=backend,
                phone_number=msisdn.e164,
                active=holder.active,
                operator=holder.operator,
                name=holder.name,
            ),
        )


async def handle_rpc(
    message: AbstractIncomingMessage, *, publisher: Publisher, answers: Answers
) -> None:
    try:
        try:
            reply = await answers.answer(message)
        except Exception as exc:  # the caller gets an answer, never silence
            log.exception("request failed")
            reply = _error("unavailable", type(exc).__name__)
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
