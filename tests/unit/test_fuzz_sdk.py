"""Property tests of what the SDK takes from an app: every operation that takes input either
refuses it with a ``ValueError`` (the SDK's ``ValidationError`` for money commands) before
anything is published, or publishes a message the worker takes as it is.

No broker: ``KunPayClient.connect()`` runs against an in-memory stand-in for aio-pika's robust
connection (``aio_pika.connect_robust`` patched for the test only). Each published message goes
through pamqp's wire encoding and decoding, as RabbitMQ would see it, and is then parsed the way
the worker parses it: ``kunpay_worker.handlers.parse_command`` for commands (plus the business
rules the payment handler applies again), ``RPC_REQUESTS`` for requests. Requests are answered
with an error reply, so their valid outcome is that ``RemoteError``.

The bugs these properties found (NUL and lone surrogates in text fields, a correlation id over
the AMQP property's 255 bytes, refund and quote amounts finer than the wire's four places) are
fixed; a plain test at the end of the file pins each.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, TypeVar, cast
from unittest import mock
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pamqp import frame, header
from pamqp.commands import Basic

from kunpay_sdk import KunPayClient, RemoteError, topology
from kunpay_sdk.client import DIRECT_REPLY_TO
from kunpay_sdk.contracts import (
    RPC_REQUESTS,
    AccountHolderRequest,
    BalanceRequest,
    CollectCommand,
    DisburseCommand,
    GetRequest,
    ListRequest,
    QuoteRequest,
    RefundCommand,
    RetryCommand,
    RpcReply,
    Status,
    VerifyRequest,
    transaction_id_for,
    validate_payment,
)
from kunpay_sdk.errors import InvalidAmount, InvalidField, ValidationError
from kunpay_sdk.money import MAX_AMOUNT
from kunpay_sdk.msisdn import PROVIDER_OPERATORS, parse_msisdn
from kunpay_worker.handlers import parse_command
from kunpay_worker.messaging import Delivery

APP = "shop"
REPLY_CODE = "fuzz-recorded"  # what the stand-in worker answers every request with

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- an in-memory broker behind KunPayClient.connect() ----------------------------------------


@dataclass
class Published:
    exchange: str
    routing_key: str
    mandatory: bool
    properties: Basic.Properties  # as decoded from the wire
    body: bytes


@dataclass
class FakeBroker:
    published: list[Published] = field(default_factory=list)
    consumers: dict[str, Callable[[Any], Awaitable[Any]]] = field(default_factory=dict)

    async def connect(self, url: str, **_: Any) -> FakeConnection:
        return FakeConnection(self)


def _over_the_wire(message: aio_pika.Message) -> Basic.Properties:
    """The properties as RabbitMQ (and then the worker) would get them: pamqp encodes them as
    aiormq does when publishing (raising what it raises), and decodes them again."""
    data = frame.marshal(header.ContentHeader(0, len(message.body), message.properties), 1)
    _, _, decoded = frame.unmarshal(data)
    assert isinstance(decoded, header.ContentHeader)
    return decoded.properties


class FakeExchange:
    def __init__(self, broker: FakeBroker, name: str) -> None:
        self.broker = broker
        self.name = name

    async def publish(
        self,
        message: aio_pika.Message,
        routing_key: str,
        *,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        properties = _over_the_wire(message)
        self.broker.published.append(
            Published(self.name, routing_key, mandatory, properties, message.body)
        )
        if self.name == topology.REQUESTS_EXCHANGE:
            # The worker's answer comes back through direct reply-to.
            reply = RpcReply(ok=False, error_code=REPLY_CODE, error="recorded")
            incoming = SimpleNamespace(
                correlation_id=properties.correlation_id,
                body=reply.model_dump_json().encode(),
                message_id=None,
            )
            await self.broker.consumers[DIRECT_REPLY_TO](incoming)


class FakeQueue:
    def __init__(self, broker: FakeBroker, name: str) -> None:
        self.broker = broker
        self.name = name

    async def consume(self, callback: Callable[[Any], Awaitable[Any]], **_: Any) -> str:
        self.broker.consumers[self.name] = callback
        return f"ctag-{self.name}"

    async def bind(self, *_: Any, **__: Any) -> None:
        return None


class FakeChannel:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.is_closed = False

    async def get_exchange(self, name: str, *, ensure: bool = True) -> FakeExchange:
        return FakeExchange(self.broker, name)

    async def get_queue(self, name: str, *, ensure: bool = True) -> FakeQueue:
        return FakeQueue(self.broker, name)

    async def declare_queue(self, name: str, **_: Any) -> FakeQueue:
        return FakeQueue(self.broker, name)

    async def set_qos(self, **_: Any) -> None:
        return None

    async def close(self) -> None:
        self.is_closed = True


class FakeConnection:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.reconnect_callbacks: set[Any] = set()

    async def channel(self, **_: Any) -> FakeChannel:
        return FakeChannel(self.broker)

    async def close(self) -> None:
        return None


async def connect(broker: FakeBroker, *, sandbox: bool = False) -> KunPayClient:
    with mock.patch.object(aio_pika, "connect_robust", broker.connect):
        return await KunPayClient.connect(f"amqp://{APP}:secret@broker.invalid/", sandbox=sandbox)


# -- inputs -----------------------------------------------------------------------------------

# Digits of other scripts: Arabic-Indic, extended Arabic-Indic, Devanagari, Bengali, Thai,
# fullwidth, mathematical bold.
_DIGIT_ZEROS = (0x30, 0x660, 0x6F0, 0x966, 0x9E6, 0xE50, 0xFF10, 0x1D7CE)
_SEPARATORS = ("", " ", "-", ".", "(", ")", "\u00a0", "\t", "\u2009", "\u200b", "/", "_")


# Mobile ranges of MTN (65[0-4], 67x, 68[0-3]) and Orange (64[0-2], 65[5-9], 68[6-9], 69x).
_MOBILE_PREFIXES = [
    *(f"65{d}" for d in range(10)),
    *(f"67{d}" for d in range(10)),
    *(f"68{d}" for d in range(10)),
    *(f"69{d}" for d in range(10)),
    "640",
    "641",
    "642",
]


@st.composite
def _phone_shaped(draw: st.DrawFn, *, plausible: bool = True) -> str:
    """A Cameroon-looking number: a prefix, nine digits (some in another script), separators.
    ``plausible=False`` also varies the range and the count of digits."""
    if plausible:
        prefix = draw(st.sampled_from(_MOBILE_PREFIXES))
        digits = prefix + draw(st.text("0123456789", min_size=6, max_size=6))
    else:
        digits = draw(st.text("0123456789", min_size=7, max_size=11))
    zero = draw(st.sampled_from(_DIGIT_ZEROS))
    if zero != 0x30:
        digits = "".join(chr(zero + int(d)) if draw(st.booleans()) else d for d in digits)
    prefixes = ["", "237", "+237", "00237", "+ 237", "(237)"]
    if not plausible:
        prefixes += ["+", "0", "+33", "0237", "+2370"]
    parts = [draw(st.sampled_from(prefixes))]
    for char in digits:
        parts.append(char)
        if draw(st.integers(0, 4)) == 0:
            parts.append(draw(st.sampled_from(_SEPARATORS)))
    ends = ["", " ", "\n", "\u3000"] if plausible else ["", "\x00", "+", "#"]
    return draw(st.sampled_from(ends)) + "".join(parts) + draw(st.sampled_from(ends))


PHONES = st.one_of(
    _phone_shaped(),
    _phone_shaped(plausible=False),
    st.sampled_from(
        [
            "670000000",
            "690000000",
            "+237670000000",
            "00237 6 70 00 00 00",
            "46733123450",
            "+46733123499",
            "620000000",  # Camtel: a landline range
            "660000000",  # Nexttel
            "670000000" * 4,
            "",
            "   ",
            "+",
            "+-().",
        ]
    ),
    st.text(max_size=40),
    st.from_regex(r"\A[+\d\s().-]{0,40}\Z"),
    st.none(),
    st.integers(),
    st.binary(max_size=12),
)

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_CONTROL = st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"])
TEXTS = st.one_of(
    st.text(min_size=1, max_size=30),
    st.text(min_size=1, max_size=30),
    st.text(min_size=190, max_size=210),
    st.text(alphabet=st.one_of(st.characters(), _SURROGATES), max_size=30),
    st.text(alphabet=_CONTROL, max_size=30),
    st.sampled_from(["", " ", "\t\n", "order-42", "u-1", "x" * 200, "x" * 201, "é" * 200]),
    st.integers(),
    st.none(),
    st.binary(max_size=8),
)
GOOD_TEXT = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=40)
# Optional strings: None is the default (a key is then generated).
OPTIONAL_TEXTS = st.one_of(st.none(), TEXTS, st.text(min_size=60, max_size=200))

AMOUNTS = st.one_of(
    st.decimals(),  # anything, NaN and sNaN and infinities included
    st.decimals(min_value=1, max_value=10**12, places=0),
    st.decimals(min_value=Decimal("0.0001"), max_value=10**12, places=2),
    st.decimals(min_value=Decimal("-1e6"), max_value=Decimal("1e6"), places=6),
    st.sampled_from(
        [
            Decimal("5000"),
            Decimal("5E+3"),
            Decimal("5000.000"),
            Decimal("0"),
            Decimal("-0"),
            Decimal("-5000"),
            Decimal("0.5"),
            Decimal("1E-30"),
            Decimal("1E+30"),
            MAX_AMOUNT,
            MAX_AMOUNT + 1,
            Decimal("99999999999.9999"),
            Decimal("12.345"),
            Decimal("NaN"),
            Decimal("sNaN"),
            Decimal("Infinity"),
            Decimal("-Infinity"),
        ]
    ),
    st.integers(),
    st.integers(min_value=1, max_value=10**6),
    st.floats(),
    st.floats(min_value=1, max_value=1e6),
    st.text(max_size=12),
    st.sampled_from(["5000", "5e3", " 5000", "NaN", "inf"]),
    st.booleans(),
    st.none(),
)
OPTIONAL_AMOUNTS = st.one_of(st.none(), AMOUNTS)
CURRENCIES = st.one_of(
    st.sampled_from(["XAF", "XAF", "XAF", "EUR", "xaf", "USD", "XOF", "", " XAF", "XAF\n"]),
    st.text(max_size=10),
    st.none(),
    st.integers(),
)
PROVIDER_KEYS = sorted(PROVIDER_OPERATORS)
PROVIDERS = st.one_of(
    st.sampled_from(PROVIDER_KEYS),
    st.sampled_from(PROVIDER_KEYS),
    st.sampled_from(["mtn_cameroon", "MTN", "MTN_MOMO", "ORANGE_MP", " PAWAPAY", ""]),
    st.text(max_size=30),
    st.text(min_size=195, max_size=205),
    st.none(),
    st.integers(),
)
UUIDS = st.one_of(
    st.uuids(),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.binary(min_size=16, max_size=16),
    st.text(max_size=40),
    st.integers(),
    st.none(),
)

T = TypeVar("T")


def mostly(good: st.SearchStrategy[T], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Good values about nine times in ten, so that whole commands are valid often enough."""
    return st.integers(0, 9).flatmap(lambda n: bad if n == 9 else good)


PAYMENT_KWARGS = st.fixed_dictionaries(
    {
        "provider": mostly(st.sampled_from(PROVIDER_KEYS), PROVIDERS),
        "amount": mostly(st.decimals(min_value=1, max_value=10**9, places=0), AMOUNTS),
        "currency": mostly(st.just("XAF"), CURRENCIES),
        "phone_number": mostly(_phone_shaped(), PHONES),
        "order_id": mostly(GOOD_TEXT, TEXTS),
        "user_id": mostly(GOOD_TEXT, TEXTS),
        "idempotency_key": st.one_of(st.none(), GOOD_TEXT, OPTIONAL_TEXTS),
        "correlation_id": st.one_of(st.none(), GOOD_TEXT, OPTIONAL_TEXTS),
        "payment_type": st.one_of(st.none(), GOOD_TEXT, OPTIONAL_TEXTS),
    }
)

# -- the property -----------------------------------------------------------------------------


def refused(exc: BaseException, *, money: bool) -> bool:
    """True when ``exc`` is an acceptable refusal of bad input (ValueError; for money commands
    the SDK's own ValidationError); False lets the caller re-raise."""
    if isinstance(exc, ValidationError if money else ValueError):
        event(f"refused: {type(exc).__name__}")
        return True
    return False


def delivered(item: Published) -> AbstractIncomingMessage:
    """What the worker's consumer gets for a published message."""
    properties = item.properties
    return cast(
        AbstractIncomingMessage,
        SimpleNamespace(
            body=item.body,
            user_id=properties.user_id,
            headers=properties.headers,
            message_id=properties.message_id,
            correlation_id=properties.correlation_id,
            content_type=properties.content_type,
            exchange=item.exchange,
            routing_key=item.routing_key,
            delivery_mode=properties.delivery_mode,
        ),
    )


AnyCommand = CollectCommand | DisburseCommand | RefundCommand | RetryCommand


def worker_takes_command(item: Published, *, sandbox: bool) -> AnyCommand:
    """The command as the worker parses it; fails if the worker would dead-letter it or reject
    it as invalid."""
    assert item.exchange == topology.COMMANDS_EXCHANGE
    assert item.routing_key in topology.COMMAND_ROUTING_KEYS
    assert item.mandatory
    properties = item.properties
    assert properties.delivery_mode == 2  # persistent
    assert properties.content_type == "application/json"
    assert properties.message_id
    delivery = Delivery(delivered(item), attempt=1, max_attempts=10)
    app, command = parse_command(delivery)
    assert app == APP
    assert command.operation == item.routing_key == properties.message_type
    headers = properties.headers or {}
    assert headers["command_id"] == str(command.command_id)
    assert headers["transaction_id"] == str(command.transaction_id)
    assert headers["idempotency_key"] == command.idempotency_key
    if isinstance(command, CollectCommand | DisburseCommand):
        # The payment handler validates again: the same rules, nothing to reject as INVALID,
        # and the normalised values are their own normal form.
        fields = validate_payment(
            provider=command.provider,
            amount=command.amount,
            currency=command.currency,
            phone_number=command.phone_number,
            order_id=command.order_id,
            user_id=command.user_id,
            sandbox=sandbox,
        )
        assert fields.provider == command.provider
        assert fields.amount == command.amount
        assert fields.currency == command.currency
        assert fields.phone_number == command.phone_number
    return command


def worker_takes_request(item: Published) -> Any:
    assert item.exchange == topology.REQUESTS_EXCHANGE
    assert item.routing_key == topology.RPC_ROUTING_KEY
    properties = item.properties
    assert properties.user_id == APP
    assert properties.reply_to == DIRECT_REPLY_TO
    assert properties.correlation_id
    assert properties.expiration  # a request nobody answers in time is dropped
    return RPC_REQUESTS.validate_json(item.body)


def _as_text(value: object) -> object:
    """pydantic's lax mode takes UTF-8 bytes for a str field."""
    return value.decode() if isinstance(value, bytes) else value


# -- collect and disburse ---------------------------------------------------------------------


@FUZZ
@given(
    operation=st.sampled_from(["collect", "disburse"]),
    sandbox=st.booleans(),
    kwargs=PAYMENT_KWARGS,
)
async def test_collect_and_disburse_refuse_or_publish_what_the_worker_takes(
    operation: str, sandbox: bool, kwargs: dict[str, Any]
) -> None:
    broker = FakeBroker()
    client = await connect(broker, sandbox=sandbox)
    call = client.collect if operation == "collect" else client.disburse
    try:
        accepted = await call(**kwargs)
    except Exception as exc:
        if not refused(exc, money=True):
            raise
        assert broker.published == []
        return
    (item,) = broker.published
    event("published")
    command = worker_takes_command(item, sandbox=sandbox)
    assert isinstance(command, CollectCommand if operation == "collect" else DisburseCommand)
    assert command.transaction_id == accepted.transaction_id
    assert command.command_id == accepted.command_id
    assert command.idempotency_key == accepted.idempotency_key
    if kwargs["idempotency_key"] is not None:
        assert accepted.idempotency_key == kwargs["idempotency_key"]
    assert accepted.transaction_id == transaction_id_for(APP, operation, accepted.idempotency_key)
    # What was asked for, normalised: the same amount, number and texts.
    assert command.amount == Decimal(kwargs["amount"])
    assert command.phone_number == parse_msisdn(kwargs["phone_number"], sandbox=sandbox).e164
    assert command.provider == kwargs["provider"]
    assert command.currency == kwargs["currency"]
    assert (command.order_id, command.user_id) == (kwargs["order_id"], kwargs["user_id"])
    assert command.correlation_id == kwargs["correlation_id"]
    assert command.payment_type == kwargs["payment_type"]


# -- refund and retry -------------------------------------------------------------------------


@FUZZ
@given(
    original=mostly(st.uuids(), UUIDS),
    amount=st.one_of(st.none(), mostly(st.decimals(min_value=1, max_value=10**9), AMOUNTS)),
    idempotency_key=OPTIONAL_TEXTS,
    correlation_id=OPTIONAL_TEXTS,
)
async def test_refund_refuses_or_publishes_what_the_worker_takes(
    original: Any, amount: Any, idempotency_key: Any, correlation_id: Any
) -> None:
    broker = FakeBroker()
    client = await connect(broker)
    try:
        accepted = await client.refund(
            original, amount, idempotency_key=idempotency_key, correlation_id=correlation_id
        )
    except Exception as exc:
        if not refused(exc, money=True):
            raise
        assert broker.published == []
        return
    (item,) = broker.published
    event("published")
    command = worker_takes_command(item, sandbox=False)
    assert isinstance(command, RefundCommand)
    assert command.transaction_id == accepted.transaction_id
    assert command.original_transaction_id == uuid.UUID(str(original))
    if amount is None:
        assert command.amount is None
    else:
        assert command.amount == Decimal(amount)
        assert Decimal(0) < command.amount <= MAX_AMOUNT
    assert command.correlation_id == correlation_id


@FUZZ
@given(original=mostly(st.uuids(), UUIDS), idempotency_key=OPTIONAL_TEXTS)
async def test_retry_refuses_or_publishes_what_the_worker_takes(
    original: Any, idempotency_key: Any
) -> None:
    broker = FakeBroker()
    client = await connect(broker)
    try:
        accepted = await client.retry(original, idempotency_key=idempotency_key)
    except Exception as exc:
        if not refused(exc, money=True):
            raise
        assert broker.published == []
        return
    (item,) = broker.published
    event("published")
    command = worker_takes_command(item, sandbox=False)
    assert isinstance(command, RetryCommand)
    assert command.original_transaction_id == uuid.UUID(str(original))
    if idempotency_key is None:
        # One retry per failed transaction by default.
        assert command.idempotency_key == f"retry:{command.original_transaction_id}"
    assert command.transaction_id == accepted.transaction_id


# -- requests ---------------------------------------------------------------------------------


async def request_outcome(broker: FakeBroker, call: Awaitable[object]) -> Any:
    """The request the worker would parse, or None when the SDK refused the input."""
    answered: RemoteError | None = None
    try:
        await call
    except RemoteError as exc:
        answered = exc  # published, and the stand-in worker answered
    except Exception as exc:
        if not refused(exc, money=False):
            raise
        assert broker.published == []
        return None
    assert answered is not None, "the stand-in worker answers every request with an error"
    assert answered.code == REPLY_CODE
    (item,) = broker.published
    event("published")
    return worker_takes_request(item)


@FUZZ
@given(method=st.sampled_from(["get", "verify"]), transaction_id=UUIDS)
async def test_get_and_verify_refuse_or_publish_what_the_worker_takes(
    method: str, transaction_id: Any
) -> None:
    broker = FakeBroker()
    client = await connect(broker)
    call = client.get if method == "get" else client.verify
    request = await request_outcome(broker, call(transaction_id))
    if request is not None:
        assert isinstance(request, GetRequest if method == "get" else VerifyRequest)
        assert isinstance(request.transaction_id, uuid.UUID)


@FUZZ
@given(
    order_id=st.one_of(st.none(), TEXTS),
    user_id=st.one_of(st.none(), TEXTS),
    status=st.one_of(
        st.none(), st.sampled_from(list(Status)), st.sampled_from([s.value for s in Status]), TEXTS
    ),
    limit=st.one_of(
        st.integers(min_value=1, max_value=500),
        st.integers(),
        st.floats(),
        st.sampled_from([0, 501, "10", True, None]),
    ),
)
async def test_list_refuses_or_publishes_what_the_worker_takes(
    order_id: Any, user_id: Any, status: Any, limit: Any
) -> None:
    broker = FakeBroker()
    client = await connect(broker)
    request = await request_outcome(
        broker,
        client.list(order_id=order_id, user_id=user_id, status=status, limit=limit),
    )
    if request is not None:
        assert isinstance(request, ListRequest)
        assert 1 <= request.limit <= 500
        assert request.order_id == _as_text(order_id)
        assert request.user_id == _as_text(user_id)


@FUZZ
@given(
    payment_type=mostly(GOOD_TEXT, TEXTS),
    net_amount=mostly(st.decimals(min_value=1, max_value=10**9, places=0), AMOUNTS),
)
async def test_quote_refuses_or_publishes_what_the_worker_takes(
    payment_type: Any, net_amount: Any
) -> None:
    broker = FakeBroker()
    client = await connect(broker)
    request = await request_outcome(broker, client.quote(payment_type, net_amount))
    if request is not None:
        assert isinstance(request, QuoteRequest)
        assert request.payment_type == payment_type
        assert request.net_amount == Decimal(net_amount) > 0


@FUZZ
@given(provider=PROVIDERS, phone_number=st.one_of(st.none(), PHONES), sandbox=st.booleans())
async def test_balance_and_account_holder_refuse_or_publish_what_the_worker_takes(
    provider: Any, phone_number: Any, sandbox: bool
) -> None:
    broker = FakeBroker()
    client = await connect(broker, sandbox=sandbox)
    if phone_number is None:
        request = await request_outcome(broker, client.balance(provider))
        if request is not None:
            assert isinstance(request, BalanceRequest)
            assert request.provider in PROVIDER_OPERATORS
        return
    request = await request_outcome(broker, client.account_holder(provider, phone_number))
    if request is not None:
        assert isinstance(request, AccountHolderRequest)
        assert request.provider in PROVIDER_OPERATORS
        # The worker parses the number again (with its own sandbox setting).
        assert parse_msisdn(request.phone_number, sandbox=sandbox).e164 == request.phone_number


# -- subscriptions and connecting -------------------------------------------------------------


@FUZZ
@given(
    queue=st.one_of(GOOD_TEXT, st.text(max_size=70), st.sampled_from(["", "a" * 64, "a" * 65])),
    since=st.one_of(
        st.none(),
        st.datetimes(timezones=st.just(UTC)),
        st.datetimes(),  # naive
        st.datetimes(timezones=st.just(timezone(timedelta(hours=1)))),
    ),
)
async def test_events_refuses_or_names_a_queue_of_the_app(queue: str, since: Any) -> None:
    client = await connect(FakeBroker())
    try:
        subscription = client.events(queue=queue, since=since)
    except ValueError:
        return
    assert since is None or since.tzinfo is not None
    assert subscription.queue_name == f"app.{APP}.{queue}"
    assert topology.APP_NAME.match(queue)


@FUZZ
@given(
    user=st.one_of(
        GOOD_TEXT,
        st.text(max_size=70),
        st.text(max_size=70).map(lambda s: quote(s, safe="")),
        st.sampled_from(["", "guest", "a" * 64, "a" * 65, "shop%20x", "%F0%9F%98%80", "@", "["]),
    ),
)
async def test_connect_refuses_or_takes_the_broker_user_as_app(user: str) -> None:
    broker = FakeBroker()
    url = f"amqp://{user}:secret@broker.invalid/"
    try:
        with mock.patch.object(aio_pika, "connect_robust", broker.connect):
            client = await KunPayClient.connect(url)
    except ValueError:
        return
    assert topology.APP_NAME.match(client.app)


# -- what the properties found: each once a bug, now refused before anything is published -----

GOOD_COLLECT: dict[str, Any] = {
    "provider": "MTN_CAMEROON",
    "amount": Decimal(5000),
    "currency": "XAF",
    "phone_number": "670000000",
    "order_id": "o",
    "user_id": "u",
}


async def test_a_correlation_id_over_255_bytes_is_an_invalid_field() -> None:
    # 200 characters fit the field, but the AMQP correlation_id property is a short string
    # (255 bytes): pamqp raised TypeError while publishing.
    broker = FakeBroker()
    client = await connect(broker)
    with pytest.raises(InvalidField, match="255 bytes"):
        await client.collect(**GOOD_COLLECT, correlation_id="é" * 200)
    with pytest.raises(InvalidField, match="255 bytes"):
        await client.refund(uuid.uuid4(), correlation_id="é" * 128)
    assert broker.published == []
    await client.collect(**GOOD_COLLECT, correlation_id="é" * 127 + "x")  # 255 bytes: taken
    assert len(broker.published) == 1


@pytest.mark.parametrize(
    "amount", [Decimal("0.00001"), Decimal("1234567890.12345"), Decimal("1E-30")]
)
async def test_a_refund_or_quote_amount_finer_than_the_wire_is_an_invalid_amount(
    amount: Decimal,
) -> None:
    # RefundCommand's decimal(18, 4) raised pydantic's error instead of InvalidAmount.
    broker = FakeBroker()
    client = await connect(broker)
    with pytest.raises(InvalidAmount, match="4 decimal places"):
        await client.refund(uuid.uuid4(), amount)
    with pytest.raises(InvalidAmount, match="4 decimal places"):
        await client.quote("mtn-mobile-money", amount)
    assert broker.published == []


async def test_a_refund_amount_with_trailing_zeros_is_taken() -> None:
    broker = FakeBroker()
    client = await connect(broker)
    await client.refund(uuid.uuid4(), Decimal("12.50000000"))
    (item,) = broker.published
    command = worker_takes_command(item, sandbox=False)
    assert isinstance(command, RefundCommand)
    assert command.amount == Decimal("12.5")


@pytest.mark.parametrize(
    "field_name", ["order_id", "user_id", "idempotency_key", "correlation_id", "payment_type"]
)
@pytest.mark.parametrize(("text", "message"), [("a\ud800b", "lone surrogate"), ("a\x00b", "NUL")])
async def test_a_lone_surrogate_or_nul_in_a_text_field_is_an_invalid_field(
    field_name: str, text: str, message: str
) -> None:
    # A lone surrogate cannot be encoded (uuid5 of a key, or the model, raised); NUL was
    # published, and the worker dead-letters such a command (no database column holds it).
    broker = FakeBroker()
    client = await connect(broker)
    with pytest.raises(InvalidField, match=f"{field_name} .*{message}"):
        await client.collect(**{**GOOD_COLLECT, field_name: text})
    assert broker.published == []
