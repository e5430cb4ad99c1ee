"""KunPayClient: validate a command, publish it with confirms, await or subscribe to outcomes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq.exceptions
from aio_pika import ExchangeType
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import ValidationError as PydanticValidationError

from kunpay_sdk import topology
from kunpay_sdk.contracts import (
    AccountHolderInfo,
    AccountHolderRequest,
    BalanceInfo,
    BalanceRequest,
    CollectCommand,
    DisburseCommand,
    Event,
    GetRequest,
    ListRequest,
    Quote,
    QuoteRequest,
    RefundCommand,
    RetryCommand,
    RpcReply,
    Status,
    TransactionSnapshot,
    VerifyRequest,
    check_correlation_id,
    check_idempotency_key,
    check_payment_type,
    check_text,
    transaction_id_for,
    utcnow,
    validate_payment,
    validate_refund_amount,
)
from kunpay_sdk.errors import (
    BrokerError,
    CommandNacked,
    CommandUnroutable,
    InvalidAmount,
    InvalidField,
    KunPayError,
    KunPayTimeout,
    OutcomeUnknown,
    RemoteError,
    TopologyMissing,
    TransactionNotFound,
)
from kunpay_sdk.msisdn import check_provider, parse_msisdn

__all__ = ["Accepted", "KunPayClient", "Subscription"]

_AnyRequest = (
    GetRequest | VerifyRequest | ListRequest | QuoteRequest | BalanceRequest | AccountHolderRequest
)
_T = TypeVar("_T")


def _required(value: _T | None, what: str) -> _T:
    if value is None:
        raise RemoteError("protocol", f"reply without {what}")
    return value


def _uuid(value: object, name: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidField(f"{name} must be a UUID, got {value!r}")


log = logging.getLogger("kunpay_sdk")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# events(since=): clocks differ between machines; an event that occurred this long after the
# subscriber's queue was bound was surely published after it, so the queue has it.
_CLOCK_SKEW = timedelta(seconds=60)
# events(since=): read-back event ids remembered to drop the queue's copies.
_SEEN_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class _Ids:
    transaction_id: uuid.UUID
    command_id: uuid.UUID
    idempotency_key: str

    def kwargs(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "command_id": self.command_id,
            "idempotency_key": self.idempotency_key,
        }


@dataclass(frozen=True, slots=True)
class Accepted:
    """The broker confirmed the command. The transaction id is known before anything settles."""

    transaction_id: uuid.UUID
    command_id: uuid.UUID
    idempotency_key: str


class _CaughtUp:
    """An event read back from the ``kunpay.events.log`` stream (``events(since=...)``): the
    stream cannot take it back, so a failing handler's exception always propagates; start
    again with ``since=event.occurred_at`` to resume from it."""

    __slots__ = ("_message",)

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message

    @contextlib.asynccontextmanager
    async def process(self, *, reraise: bool) -> AsyncIterator[None]:
        del reraise  # a catch-up event is never swallowed: it could not come back
        yield
        await _settle(self._message.ack())


class _Delivery:
    """Ack/nack bookkeeping for one event received through ``events()``."""

    __slots__ = ("_message",)

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message

    @contextlib.asynccontextmanager
    async def process(self, *, reraise: bool) -> AsyncIterator[None]:
        try:
            yield
        except Exception:
            log.exception("event handler failed; the event goes back to the queue")
            # Bounded: the subscriber queue's x-delivery-limit moves the event to its
            # dead-letter queue after that many deliveries.
            await _settle(self._message.nack(requeue=True))
            if reraise:
                raise
        else:
            await _settle(self._message.ack())


_BROKER_GONE = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


async def _settle(action: Awaitable[None]) -> None:
    """Ack or nack an event. When the channel it came on has closed (the broker restarted or
    dropped the connection) there is nothing to settle: the broker puts the event back and
    delivers it again, so the subscription goes on instead of ending."""
    try:
        await action
    except _BROKER_GONE as exc:
        log.warning("the event's channel closed before it was settled; it comes again: %r", exc)


def _on_live_channel(message: AbstractIncomingMessage) -> bool:
    """Whether ``message`` can still be acked: one received before its channel closed is
    back in the queue and comes again on the new channel."""
    try:
        return not message.channel.is_closed
    except _BROKER_GONE:  # aio-pika raises ChannelInvalidStateError for a closed channel
        return False


class KunPayClient:
    """The app's handle on kunpay.

    ::

        async with await KunPayClient.connect("amqp://shop:secret@broker/") as client:
            accepted = await client.collect(provider="MTN_CAMEROON", amount=Decimal("5000"),
                currency="XAF", phone_number="670000000", order_id="order-42", user_id="u-1")
            event = await client.wait(accepted.transaction_id, timeout=120)

    The app's identity is its broker user: RabbitMQ checks the ``user_id`` the client stamps on
    every command, and the worker scopes transactions to it.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        *,
        app: str,
        sandbox: bool,
        publish_timeout: float,
        request_timeout: float,
    ) -> None:
        self.app = app
        self.sandbox = sandbox
        self.publish_timeout = publish_timeout
        self.request_timeout = request_timeout
        self._connection = connection
        self._publish_channel: AbstractChannel | None = None
        self._commands: AbstractExchange | None = None
        self._rpc_channel: AbstractChannel | None = None
        self._requests: AbstractExchange | None = None
        self._rpc_pending: dict[str, asyncio.Future[RpcReply]] = {}
        self._waiters: dict[uuid.UUID, set[asyncio.Future[Event]]] = {}
        self._outcome_queue: AbstractQueue | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        amqp_url: str,
        *,
        sandbox: bool = False,
        publish_timeout: float = 10.0,
        request_timeout: float = 10.0,
    ) -> Self:
        """Connect, check kunpay's topology, and bind this client's outcome queue.

        ``sandbox=True`` also accepts MTN's sandbox test numbers and EUR.
        """
        app = topology.validate_app_name(unquote(urlsplit(amqp_url).username or "guest"))
        connection = await aio_pika.connect_robust(amqp_url)
        client = cls(
            connection,
            app=app,
            sandbox=sandbox,
            publish_timeout=publish_timeout,
            request_timeout=request_timeout,
        )
        try:
            await client._setup()
        except BaseException:
            await connection.close()
            raise
        return client

    async def _setup(self) -> None:
        try:
            await topology.check(self._connection)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise TopologyMissing(
                f"kunpay's exchanges are not declared on this broker ({exc}); "
                "start the worker or run `kunpay-worker migrate` first"
            ) from exc

        self._publish_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._commands = await self._publish_channel.get_exchange(
            topology.COMMANDS_EXCHANGE, ensure=False
        )

        # Replies come back on direct reply-to: consume it on the channel that publishes requests.
        self._rpc_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._requests = await self._rpc_channel.get_exchange(
            topology.REQUESTS_EXCHANGE, ensure=False
        )
        reply_to = await self._rpc_channel.declare_queue(DIRECT_REPLY_TO, passive=True)
        await reply_to.consume(self._on_rpc_reply, no_ack=True)

        # Outcomes are bound before any publish, so wait() cannot miss an event of ours.
        outcome_channel = await self._connection.channel(publisher_confirms=False)
        await outcome_channel.set_qos(prefetch_count=256)
        self._outcome_queue = await outcome_channel.declare_queue(
            f"app.{self.app}.client.{uuid.uuid4().hex}", exclusive=True, auto_delete=True
        )
        outcomes = await outcome_channel.get_exchange(topology.OUTCOMES_EXCHANGE, ensure=False)
        await self._outcome_queue.bind(outcomes, routing_key=f"{self.app}.#")
        await self._outcome_queue.consume(self._on_outcome, no_ack=True)

        self._connection.reconnect_callbacks.add(self._on_reconnect)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(KunPayError("client closed"))
        for rpc in self._rpc_pending.values():
            if not rpc.done():
                rpc.set_exception(KunPayError("client closed"))
        for task in self._background:
            task.cancel()
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- commands ----------------------------------------------------------------------------

    async def collect(
        self,
        *,
        provider: str,
        amount: Decimal,
        currency: str,
        phone_number: str,
        order_id: str,
        user_id: str,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        payment_type: str | None = None,
    ) -> Accepted:
        """Ask ``phone_number`` to pay ``amount``; returns once the broker confirmed the command.

        Raises a ``ValidationError`` (a ``ValueError``) for bad input before anything is sent;
        ``CommandNotAccepted`` when the broker refused it (safe to call again);
        ``OutcomeUnknown`` on timeout or a lost connection: call again with
        ``idempotency_key=err.idempotency_key``, which can never create a second transaction.
        """
        return await self._payment(
            CollectCommand,
            provider=provider,
            amount=amount,
            currency=currency,
            phone_number=phone_number,
            order_id=order_id,
            user_id=user_id,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            payment_type=payment_type,
        )

    async def disburse(
        self,
        *,
        provider: str,
        amount: Decimal,
        currency: str,
        phone_number: str,
        order_id: str,
        user_id: str,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        payment_type: str | None = None,
    ) -> Accepted:
        """Pay ``amount`` to ``phone_number`` (a payout); same contract as :meth:`collect`.

        On MTN the worker first checks the payee's account and the disbursement balance: an
        inactive account or a short balance fails the payout with nothing sent.
        """
        return await self._payment(
            DisburseCommand,
            provider=provider,
            amount=amount,
            currency=currency,
            phone_number=phone_number,
            order_id=order_id,
            user_id=user_id,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            payment_type=payment_type,
        )

    async def refund(
        self,
        original_transaction_id: uuid.UUID,
        amount: Decimal | None = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Accepted:
        """Refund a COMPLETED (or REFUND_FAILED) collection: all that is left (``amount=None``)
        or part of it. The refund is a transaction of its own; its outcome is
        ``payment.refunded`` or ``payment.refund_failed`` (or ``payment.rejected``: more than is
        refundable, a payment that is not refundable, a provider that cannot refund).
        """
        value = validate_refund_amount(amount)
        key = self._key(idempotency_key)
        command = RefundCommand(
            command_id=uuid.uuid4(),
            transaction_id=transaction_id_for(self.app, "refund", key),
            idempotency_key=key,
            original_transaction_id=_uuid(original_transaction_id, "original_transaction_id"),
            amount=value,
            correlation_id=check_correlation_id(correlation_id),
            issued_at=utcnow(),
        )
        await self._publish_command(command)
        return Accepted(command.transaction_id, command.command_id, key)

    async def retry(
        self,
        transaction_id: uuid.UUID,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Accepted:
        """Collect a FAILED collection again, as a new transaction with a new provider reference.

        The default key is derived from ``transaction_id``, so a failed payment is retried once
        (retry the retry to go again). The worker first asks the provider about the original
        (it may have completed late) and refuses while any attempt of the chain is PENDING or
        COMPLETED.
        """
        original = _uuid(transaction_id, "transaction_id")
        key = self._key(idempotency_key if idempotency_key is not None else f"retry:{original}")
        command = RetryCommand(
            command_id=uuid.uuid4(),
            transaction_id=transaction_id_for(self.app, "retry", key),
            idempotency_key=key,
            original_transaction_id=original,
            correlation_id=check_correlation_id(correlation_id),
            issued_at=utcnow(),
        )
        await self._publish_command(command)
        return Accepted(command.transaction_id, command.command_id, key)

    @staticmethod
    def _key(idempotency_key: str | None) -> str:
        """The caller's key, checked, or a fresh one: always known before publishing."""
        if idempotency_key is None:
            return str(uuid.uuid4())
        return check_idempotency_key(idempotency_key)

    async def _payment(
        self,
        model: type[CollectCommand] | type[DisburseCommand],
        *,
        provider: str,
        amount: Decimal,
        currency: str,
        phone_number: str,
        order_id: str,
        user_id: str,
        idempotency_key: str | None,
        correlation_id: str | None,
        payment_type: str | None,
    ) -> Accepted:
        fields = validate_payment(
            provider=provider,
            amount=amount,
            currency=currency,
            phone_number=phone_number,
            order_id=order_id,
            user_id=user_id,
            sandbox=self.sandbox,
        )
        key = self._key(idempotency_key)
        operation = "collect" if model is CollectCommand else "disburse"
        command = model(
            command_id=uuid.uuid4(),
            transaction_id=transaction_id_for(self.app, operation, key),
            idempotency_key=key,
            provider=fields.provider,
            amount=fields.amount,
            currency=fields.currency,
            phone_number=fields.phone_number,
            order_id=fields.order_id,
            user_id=fields.user_id,
            correlation_id=check_correlation_id(correlation_id),
            payment_type=check_payment_type(payment_type),
            issued_at=utcnow(),
        )
        await self._publish_command(command)
        return Accepted(command.transaction_id, command.command_id, key)

    async def _publish_command(
        self, command: CollectCommand | DisburseCommand | RefundCommand | RetryCommand
    ) -> None:
        if self._commands is None or self._closed:
            raise BrokerError("client is not connected")
        ids = _Ids(command.transaction_id, command.command_id, command.idempotency_key)
        message = aio_pika.Message(
            body=command.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(uuid.uuid4()),  # fresh per publish; the command id is in the body
            user_id=self.app,
            type=command.operation,
            correlation_id=command.correlation_id,
            timestamp=command.issued_at,
            headers={
                "schema_version": command.schema_version,
                "operation": command.operation,
                "command_id": str(command.command_id),
                "transaction_id": str(command.transaction_id),
                "idempotency_key": command.idempotency_key,
            },
        )
        try:
            await asyncio.wait_for(
                self._commands.publish(message, routing_key=command.operation, mandatory=True),
                self.publish_timeout,
            )
        except aiormq.exceptions.PublishError as exc:
            raise CommandUnroutable(
                f"no queue takes {command.operation} commands; is the worker's topology "
                f"declared? ({exc})",
                **ids.kwargs(),
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise CommandNacked(
                f"the broker refused the command ({exc}); nothing was queued", **ids.kwargs()
            ) from exc
        except TimeoutError as exc:
            raise OutcomeUnknown(
                f"no confirm within {self.publish_timeout}s; retry with the same idempotency key",
                **ids.kwargs(),
            ) from exc
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # RuntimeError covers aiormq's ChannelInvalidStateError (channel closed mid-publish).
            raise OutcomeUnknown(
                f"connection lost while publishing ({exc!r}); retry with the same idempotency key",
                **ids.kwargs(),
            ) from exc

    # -- requests ----------------------------------------------------------------------------

    async def get(
        self, transaction_id: uuid.UUID, *, timeout: float | None = None
    ) -> TransactionSnapshot:
        """The transaction as the worker has it now. Raises TransactionNotFound."""
        reply = await self._request(GetRequest(transaction_id=transaction_id), timeout)
        return _required(reply.transaction, "transaction")

    async def verify(
        self, transaction_id: uuid.UUID, *, timeout: float | None = None
    ) -> TransactionSnapshot:
        """Ask the provider about the transaction now, apply what it says, and return it."""
        timeout = timeout if timeout is not None else max(self.request_timeout, 30.0)
        reply = await self._request(VerifyRequest(transaction_id=transaction_id), timeout)
        return _required(reply.transaction, "transaction")

    async def list(
        self,
        *,
        order_id: str | None = None,
        user_id: str | None = None,
        status: Status | str | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> list[TransactionSnapshot]:
        """This app's transactions matching every filter given, newest first (at most
        ``limit``, up to 500)."""
        request = ListRequest(
            order_id=order_id,
            user_id=user_id,
            status=Status(status) if status is not None else None,
            limit=limit,
        )
        reply = await self._request(request, timeout)
        return _required(reply.transactions, "transactions")

    async def quote(
        self, payment_type: str, net_amount: Decimal, *, timeout: float | None = None
    ) -> Quote:
        """What to charge with ``payment_type`` so that the merchant nets ``net_amount``:
        gross = 100 × (net + fixed fees) / (100 − percentage fees), rounded up."""
        value = validate_refund_amount(net_amount)
        if value is None:
            raise InvalidAmount("net_amount is required")
        reply = await self._request(
            QuoteRequest(payment_type=check_text("payment_type", payment_type), net_amount=value),
            timeout,
        )
        return _required(reply.quote, "quote")

    async def balance(self, provider: str, *, timeout: float | None = None) -> BalanceInfo:
        """The provider account's available balance (backends that tell it: MTN MoMo)."""
        reply = await self._request(BalanceRequest(provider=check_provider(provider)), timeout)
        return _required(reply.balance, "balance")

    async def account_holder(
        self, provider: str, phone_number: str, *, timeout: float | None = None
    ) -> AccountHolderInfo:
        """What the provider knows of a number: MTN says whether the account is active,
        PawaPay which operator serves it."""
        msisdn = parse_msisdn(phone_number, sandbox=self.sandbox)
        request = AccountHolderRequest(provider=check_provider(provider), phone_number=msisdn.e164)
        reply = await self._request(request, timeout)
        return _required(reply.account_holder, "account_holder")

    async def _request(self, request: _AnyRequest, timeout: float | None) -> RpcReply:
        if self._requests is None or self._closed:
            raise BrokerError("client is not connected")
        requests = self._requests
        timeout = self.request_timeout if timeout is None else timeout
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[RpcReply] = asyncio.get_running_loop().create_future()
        self._rpc_pending[correlation_id] = future
        try:
            message = aio_pika.Message(
                body=request.model_dump_json().encode(),
                content_type="application/json",
                message_id=correlation_id,
                correlation_id=correlation_id,
                reply_to=DIRECT_REPLY_TO,
                user_id=self.app,
                # A request nobody answered in time is dropped, not served late.
                expiration=timedelta(seconds=timeout),
            )
            try:
                async with asyncio.timeout(timeout):
                    await requests.publish(
                        message, routing_key=topology.RPC_ROUTING_KEY, mandatory=True
                    )
                    reply = await future
            except TimeoutError as exc:
                raise KunPayTimeout(
                    f"no answer to {request.method} within {timeout}s; is the worker running?"
                ) from exc
            except aiormq.exceptions.PublishError as exc:
                raise TopologyMissing(f"the {topology.RPC_QUEUE} queue is missing") from exc
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                raise BrokerError(f"request failed: {exc!r}") from exc
        finally:
            self._rpc_pending.pop(correlation_id, None)
        if not reply.ok:
            if reply.error_code == "not_found" and isinstance(request, GetRequest | VerifyRequest):
                raise TransactionNotFound(request.transaction_id)
            raise RemoteError(reply.error_code or "error", reply.error or "")
        return reply

    async def _on_rpc_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._rpc_pending.get(message.correlation_id or "")
        if future is None or future.done():
            return
        try:
            future.set_result(RpcReply.model_validate_json(message.body))
        except PydanticValidationError as exc:
            future.set_exception(RemoteError("protocol", f"unreadable reply: {exc}"))

    # -- outcomes ----------------------------------------------------------------------------

    async def wait(self, transaction_id: uuid.UUID, *, timeout: float) -> Event:
        """The transaction's final event (succeeded, failed, rejected; refunds: refunded,
        refund_failed, rejected), even if it was published before this call.

        Raises ``KunPayTimeout`` when no final event arrives within ``timeout`` seconds. A FAILED
        payment can still complete later; that arrives as ``payment.succeeded`` with
        ``late=True`` on ``events()``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Event] = loop.create_future()
        self._waiters.setdefault(transaction_id, set()).add(future)
        try:
            async with asyncio.timeout(timeout):
                # The waiter is registered first, so an event arriving during get() is not lost.
                await self._check_final(transaction_id)
                return await future
        except TimeoutError as exc:
            raise KunPayTimeout(
                f"transaction {transaction_id} reached no final state within {timeout}s"
            ) from exc
        finally:
            waiters = self._waiters.get(transaction_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[transaction_id]

    async def _check_final(self, transaction_id: uuid.UUID) -> None:
        try:
            reply = await self._request(GetRequest(transaction_id=transaction_id), None)
        except TransactionNotFound:
            return  # not processed yet: the event will come
        except (KunPayTimeout, BrokerError, RemoteError) as exc:
            # The worker may be down, starting, or without its database: the bound outcome
            # queue still gets the event.
            log.warning("could not ask for %s (%s); waiting for its event", transaction_id, exc)
            return
        if reply.final_event is not None:
            self._resolve(reply.final_event)

    def _resolve(self, event: Event) -> None:
        if event.transaction is None or not event.is_final:
            return
        for future in self._waiters.get(event.transaction.id, ()):
            if not future.done():
                future.set_result(event)

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        try:
            event = Event.model_validate_json(message.body)
        except PydanticValidationError:
            log.warning("ignoring an unreadable outcome message %s", message.message_id)
            return
        self._resolve(event)

    async def _on_reconnect(self, *_: Any) -> None:
        # Outcomes published while we were away are gone from our (exclusive) queue: ask again.
        for transaction_id in list(self._waiters):
            task = asyncio.create_task(self._recheck(transaction_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _recheck(self, transaction_id: uuid.UUID) -> None:
        try:
            await self._check_final(transaction_id)
        except KunPayError as exc:  # e.g. RemoteError: the event may still come
            log.warning("re-checking %s after reconnect failed: %s", transaction_id, exc)

    # -- subscriptions -----------------------------------------------------------------------

    def events(
        self,
        queue: str,
        *,
        since: datetime | None = None,
        prefetch: int = 16,
        delivery_limit: int = 5,
    ) -> Subscription:
        """Lifecycle events of every transaction of this app's broker, from the durable queue
        ``app.<app>.<queue>``::

            async for event in client.events(queue="shop-orders"):
                async with event.process():
                    ...

        The queue is created and bound on first use (or by ``await subscription.start()``) and
        keeps events while nobody consumes. An event whose handler fails ``delivery_limit``
        times moves to ``app.<app>.<queue>.dead-letter``. The iteration outlives broker
        restarts and dropped connections: an event being handled when the connection dropped
        cannot be acked and comes again. It ends when the subscription or the client closes.

        ``since`` (timezone-aware): also the events that occurred from then on, read back from
        the ``kunpay.events.log`` stream (kept 7 days), for a subscriber that is new or was
        away longer than its queue existed; read-back events come first whenever one is ready,
        merged with the queue's, and those the queue also holds are dropped. Delivery stays
        at-least-once: dedupe on ``event_id``. A handler failing on a read-back event raises
        (the stream cannot take it back): start again with ``since`` a minute or so before
        that event's ``occurred_at`` (events are not published in ``occurred_at`` order).
        """
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be timezone-aware (e.g. datetime.now(UTC))")
        return Subscription(
            self._connection,
            app=self.app,
            name=queue,
            prefetch=prefetch,
            delivery_limit=delivery_limit,
            since=since,
        )


def _remember(ids: collections.OrderedDict[uuid.UUID, None], event_id: uuid.UUID) -> None:
    ids[event_id] = None
    while len(ids) > _SEEN_LIMIT:
        ids.popitem(last=False)


class Subscription:
    """An async iterator of :class:`Event` over a subscriber queue; see ``KunPayClient.events``."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        *,
        app: str,
        name: str,
        prefetch: int,
        delivery_limit: int,
        since: datetime | None = None,
    ) -> None:
        self.queue_name = topology.subscriber_queue(app, name)
        self._connection = connection
        self._app = app
        self._name = name
        self._prefetch = prefetch
        self._delivery_limit = delivery_limit
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        # Our own consumer rather than aio-pika's queue iterator: the robust queue restores
        # it after a reconnect, and a message whose channel died is skipped, not acked.
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._consumer_tag: str | None = None
        self._closed = False
        self._ended: asyncio.Future[None] | None = None  # done on close() or connection close
        self._since = since
        self._stream_channel: AbstractChannel | None = None
        self._stream: Any = None
        self._bound_at: datetime | None = None
        self._stream_done = False
        self._stream_next: asyncio.Future[AbstractIncomingMessage] | None = None
        self._queue_next: asyncio.Future[AbstractIncomingMessage] | None = None
        self._acks: list[AbstractIncomingMessage] = []
        self._rejects: list[AbstractIncomingMessage] = []
        # Ids handed over from the stream (the queue may hold them too), and from the queue
        # while the stream runs (the stream may come to them): the latest ones.
        self._streamed: collections.OrderedDict[uuid.UUID, None] = collections.OrderedDict()
        self._queued: collections.OrderedDict[uuid.UUID, None] = collections.OrderedDict()

    async def start(self) -> Self:
        """Declare and bind the queue now, so events published from here on are kept."""
        if self._closed:
            raise RuntimeError("this subscription is closed")
        if self._queue is not None:
            return self
        channel = await self._connection.channel(publisher_confirms=False)
        self._channel = channel
        await channel.set_qos(prefetch_count=self._prefetch)
        dlx = await channel.declare_exchange(
            topology.subscriber_dead_letter_exchange(self._app), ExchangeType.DIRECT, durable=True
        )
        dead = await channel.declare_queue(
            self.queue_name + ".dead-letter", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(dlx, routing_key=dead.name)
        try:
            queue = await channel.declare_queue(
                self.queue_name,
                durable=True,
                arguments=topology.subscriber_queue_arguments(
                    self._app, self._name, self._delivery_limit
                ),
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            # The queue exists with other arguments (another delivery limit, or made by an
            # earlier kunpay): use it as it is.
            log.warning("%s exists with other arguments; using it as it is", self.queue_name)
            await channel.close()
            channel = await self._connection.channel(publisher_confirms=False)
            self._channel = channel
            await channel.set_qos(prefetch_count=self._prefetch)
            queue = await channel.declare_queue(self.queue_name, passive=True)
        events = await channel.get_exchange(topology.EVENTS_EXCHANGE, ensure=False)
        await queue.bind(events)
        self._bound_at = datetime.now(UTC)
        if self._since is not None:
            stream_channel = await self._connection.channel(publisher_confirms=False)
            self._stream_channel = stream_channel
            await stream_channel.set_qos(prefetch_count=self._prefetch)  # streams need it
            log_queue = await stream_channel.declare_queue(topology.EVENTS_LOG_QUEUE, passive=True)
            self._stream = log_queue.iterator(arguments={"x-stream-offset": self._since})
        self._queue = queue
        return self

    async def _consume(self) -> None:
        if self._consumer_tag is not None or self._queue is None:
            return
        self._consumer_tag = await self._queue.consume(self._inbox.put)
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        self._ended = ended

        def connection_closed(_: object) -> None:
            if not ended.done():
                ended.set_result(None)

        # A robust connection's closed() completes only when it is closed for good.
        asyncio.ensure_future(self._connection.closed()).add_done_callback(connection_closed)

    async def _close_stream(self) -> None:
        if self._stream_next is not None:
            self._stream_next.cancel()
            self._stream_next = None
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()
        if self._stream_channel is not None and not self._stream_channel.is_closed:
            await self._stream_channel.close()
        self._stream_channel = None

    async def close(self) -> None:
        """Stop consuming; events received but not yet processed go back to the queue. An
        iteration waiting for the next event ends (StopAsyncIteration)."""
        self._closed = True
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        await self._close_stream()
        if self._queue_next is not None:
            self._queue_next.cancel()
            self._queue_next = None
        tag, self._consumer_tag = self._consumer_tag, None
        channel = self._channel
        if channel is None or channel.is_closed:
            return
        if tag is not None and self._queue is not None:
            with contextlib.suppress(*_BROKER_GONE):
                await self._queue.cancel(tag)
        with contextlib.suppress(*_BROKER_GONE):
            await channel.close()  # the broker requeues what we hold unacked

    def _from_stream(self, message: AbstractIncomingMessage) -> Event | None:
        """A read-back event to hand over, or None (skipped; the stream ends when it reaches
        events published surely after the queue was bound: the queue has those)."""
        bound_at = self._bound_at or datetime.now(UTC)  # set by start(), which ran first
        try:
            event = Event.model_validate_json(message.body)
        except PydanticValidationError:
            log.warning("unreadable event %s in the events log; skipped", message.message_id)
            return None
        if self._since is not None and event.occurred_at < self._since:
            return None  # a timestamp offset starts at a chunk: older ones come too
        if event.occurred_at >= bound_at + _CLOCK_SKEW:
            self._stream_done = True
            return None
        if event.event_id in self._queued:
            return None  # the queue handed it over already
        _remember(self._streamed, event.event_id)
        event._delivery = _CaughtUp(message)
        return event

    def _from_queue(self, message: AbstractIncomingMessage) -> Event | None:
        if not _on_live_channel(message):
            return None  # back in the queue since its channel closed: it comes again
        try:
            event = Event.model_validate_json(message.body)
        except PydanticValidationError:
            log.warning(
                "unreadable event %s moved to %s.dead-letter", message.message_id, self.queue_name
            )
            self._rejects.append(message)
            return None
        if event.event_id in self._streamed:
            self._acks.append(message)  # already handed over from the events log
            return None
        if self._stream is not None:
            _remember(self._queued, event.event_id)  # the stream may come to it too
        event._delivery = _Delivery(message)
        return event

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        """Read-back events (``since=``) and queue events, merged: the stream first whenever
        it has one ready. Delivery is at-least-once (dedupe on ``event_id``): read-back ones
        the queue also holds are dropped as far as this subscription remembers them."""
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        await self._consume()
        while True:
            for message in self._acks:
                await _settle(message.ack())
            for message in self._rejects:
                await _settle(message.reject(requeue=False))
            self._acks.clear()
            self._rejects.clear()
            if self._stream is not None and self._stream_done:
                await self._close_stream()
            if self._stream is not None and self._stream_next is None:
                self._stream_next = asyncio.ensure_future(self._stream.__anext__())
            if self._queue_next is None:
                self._queue_next = asyncio.ensure_future(self._inbox.get())
            assert self._ended is not None  # noqa: S101 - set by _consume()
            waiting = [
                t for t in (self._stream_next, self._queue_next, self._ended) if t is not None
            ]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._closed or self._ended.done():
                raise StopAsyncIteration
            if self._stream_next is not None and self._stream_next.done():
                task, self._stream_next = self._stream_next, None
                message = task.result()
                event = self._from_stream(message)
                if event is None:
                    self._acks.append(message)
                    continue
                return event
            assert self._queue_next is not None  # noqa: S101 - one of the two completed
            task, self._queue_next = self._queue_next, None
            event = self._from_queue(task.result())
            if event is not None:
                return event
