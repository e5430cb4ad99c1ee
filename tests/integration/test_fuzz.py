"""Fuzzing the worker's doors on the real stack (RabbitMQ, SQLite and PostgreSQL, the worker as
a process, the sandbox behind every backend).

Callbacks: random bodies, headers, query strings and methods on every provider path, among them
bodies naming real payments and claiming they succeeded (some correctly signed, as Flutterwave
and PawaPay sign). The worker never answers 5xx, never accepts an unauthenticated Flutterwave or
PawaPay callback, and payments the provider still reports PENDING or FAILED stay so, with no new
status row and no new event.

Raw AMQP: what any program with a broker user may publish to ``kunpay.commands``: random bytes,
JSON of every shape, commands with wrong types or invalid content, huge bodies, random headers
and properties. Each message meets the fate the worker's contract gives it, checked exactly: a
dead letter in the ``dead_letters`` table with its reason (``no_app_identity``, ``malformed``,
``transaction_id_mismatch``), or, for a well-formed command, a transaction; one invalid for its
content is ``REJECTED`` with the reason the worker's rules give and announced by
``payment.rejected``, and a key used again with other content is refused by command id. The
worker keeps running and logs no error; a valid collect still completes afterwards.

Requests: the SDK's get/verify/list/quote/balance/account_holder with fuzzed input against the
real worker: refused by the SDK, or answered (never "unavailable", never an error logged).

Examples are derandomized (the same ones on every run; the seeded payments' ids differ) and
Hypothesis keeps no database. The worker bugs these properties found (dead letters with long
message ids or NUL, a conflict quoting a non-printable key, a body that does not decode as its
Content-Encoding says) are fixed; a plain test at the end pins each.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import quote

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from kunpay_sdk import EventType, KunPayClient, RemoteError, Status, TransactionNotFound, topology
from kunpay_sdk.contracts import transaction_id_for, validate_payment
from kunpay_sdk.errors import ValidationError
from kunpay_worker.handlers import parse_command
from kunpay_worker.handlers.common import bounded
from kunpay_worker.messaging import Delivery, Reject
from kunpay_worker.providers.flutterwave.transformers import webhook_signature
from kunpay_worker.sandbox.pawapay import PawapaySandbox
from kunpay_worker.webhooks import PATHS
from tests.integration.harness import FLUTTERWAVE_SECRET_HASH, GOOD, Stack, WorkerProcess, until

pytestmark = pytest.mark.integration

APP = "guest"  # the tests' broker user, and so their app
Row = dict[str, Any]

FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def new_errors(worker: WorkerProcess, since: int) -> list[str]:
    """The error lines the worker logged from line ``since`` on, briefly (the event and the
    last line of its traceback)."""
    return [
        f"{r.get('event')}: {str(r.get('exception', '')).strip().splitlines()[-1:]}"
        for r in worker.lines[since:]
        if r.get("level") in ("error", "critical", "raw")
    ]


async def _true(value: bool) -> bool:
    return value


# -- the payments the callbacks must not move -------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    id: str
    backend: str
    reference: str
    handle: str | None
    status: str


@dataclass(frozen=True)
class Payments:
    items: tuple[Seeded, ...]
    # id → (status, event_seq, status rows), once everything about them had settled
    baseline: dict[str, tuple[str, int, int]]

    def ids(self) -> set[str]:
        return {p.id for p in self.items}

    def texts(self, backend: str | None = None) -> list[str]:
        """Every identifier a callback could name them by (of one backend's payments)."""
        items = [p for p in self.items if backend in (None, p.backend)]
        found = [p.reference for p in items] + [p.id for p in items]
        return found + [p.handle for p in items if p.handle]


# (provider key, operation, number): 6x0000010 stays PENDING forever, 6x0000002 fails with
# NOT_ENOUGH_FUNDS, on every backend.
SEEDS = [
    ("MTN_CAMEROON", "collect", "670000010"),
    ("MTN_CAMEROON", "collect", "670000002"),
    ("MTN_CAMEROON", "disburse", "670000010"),
    ("MTN_CAMEROON", "disburse", "670000002"),
    ("PAWAPAY", "collect", "670000010"),
    ("PAWAPAY", "collect", "670000002"),
    ("FLUTTERWAVE", "collect", "670000010"),
    ("FLUTTERWAVE", "collect", "670000002"),
    ("ORANGE_CAMEROON", "collect", "690000010"),
    ("ORANGE_CAMEROON", "collect", "690000002"),
]


async def states(stack: Stack, ids: Iterable[str]) -> dict[str, tuple[str, int, int]]:
    wanted = set(ids)
    rows = await stack.db.fetch("SELECT id, status, event_seq FROM transactions")
    counts = await stack.db.fetch(
        "SELECT transaction_id, COUNT(*) AS n FROM transaction_statuses GROUP BY transaction_id"
    )
    statuses = {str(r["transaction_id"]): int(r["n"]) for r in counts}
    return {
        str(r["id"]): (str(r["status"]), int(r["event_seq"]), statuses.get(str(r["id"]), 0))
        for r in rows
        if str(r["id"]) in wanted
    }


def checks_settled(worker: WorkerProcess, ids: set[str]) -> bool:
    """Every check a callback queued about these payments has been made."""
    queued = handled = 0
    for line in worker.lines:
        if line.get("transaction_id") not in ids:
            continue
        if line.get("event") == "callback: check queued":
            queued += 1
        elif line.get("event") in ("checked on a callback", "check on a callback failed"):
            handled += 1
    return handled >= queued


@pytest.fixture(scope="module")
async def payments(stack: Stack) -> Payments:
    """Two payments per backend (and MTN payouts), one PENDING for good, one FAILED, sent and
    settled, with their status and events as they stand."""
    async with await stack.client() as client:
        accepted = []
        for i, (provider, operation, number) in enumerate(SEEDS):
            send = client.collect if operation == "collect" else client.disburse
            kwargs = {**GOOD, "provider": provider, "phone_number": number}
            accepted.append(await send(**{**kwargs, "order_id": f"fuzz-seed-{i}"}))
        for (_, _, number), one in zip(SEEDS, accepted, strict=True):
            if number.endswith("2"):
                final = await client.wait(one.transaction_id, timeout=30)
                assert final.type is EventType.FAILED, final
    ids = [str(a.transaction_id) for a in accepted]
    query = "SELECT id, backend, provider_reference, provider_handle, status, initiation "
    query += "FROM transactions"

    async def seeded() -> list[dict[str, Any]]:
        return [r for r in await stack.db.fetch(query) if str(r["id"]) in ids]

    async def all_sent() -> bool:
        rows = await seeded()
        return len(rows) == len(ids) and all(r["initiation"] in ("SENT", "REFUSED") for r in rows)

    await until(all_sent, timeout=30)
    items = tuple(
        Seeded(
            id=str(r["id"]),
            backend=str(r["backend"]),
            reference=str(r["provider_reference"]),
            handle=None if r["provider_handle"] is None else str(r["provider_handle"]),
            status=str(r["status"]),
        )
        for r in await seeded()
    )
    assert sorted(p.status for p in items) == ["FAILED"] * 5 + ["PENDING"] * 5
    # The sandbox's own callbacks about them have been checked too.
    await until(lambda: _true(checks_settled(stack.workers[0], set(ids))), timeout=30)
    return Payments(items, await states(stack, ids))


# -- callbacks: what they may carry -----------------------------------------------------------

BACKEND_OF = {
    "MTN_COLLECTION": "MTN_MOMO",
    "MTN_DISBURSEMENT": "MTN_MOMO",
    "PAWAPAY": "PAWAPAY",
    "FLUTTERWAVE": "FLUTTERWAVE",
    "ORANGE_MP": "ORANGE_MP",
}
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities too: Python's json writes and reads them
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
NASTY_TEXTS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
    st.sampled_from(["", " ", "\x00", "a\x00b", "null", "None", "0", "-1", "x" * 70_000]),
    st.integers(min_value=1, max_value=20_000).map(lambda n: "r" * n),
)
STATUSES = st.sampled_from(
    ["SUCCESSFUL", "SUCCESSFULL", "COMPLETED", "successful", "FAILED", "PENDING", "", "200"]
)


def _variants(text: str) -> list[str]:
    return [text, text.upper(), f" {text}", f"{text}\n", text[:-1], f"{text}0"]


def references(payments: Payments, backend: str) -> st.SearchStrategy[Any]:
    """What a callback names a payment by: a real identifier (mostly of a payment of this
    path's backend; or a near miss), or anything."""
    real = payments.texts()
    return st.one_of(
        st.sampled_from(payments.texts(backend)),
        st.sampled_from(payments.texts(backend)),
        st.sampled_from(real),
        st.sampled_from([v for text in real for v in _variants(text)]),
        st.uuids().map(str),
        NASTY_TEXTS,
        JSON_VALUES,
        st.integers(min_value=-(2**70), max_value=2**70),
    )


def _maybe(draw: st.DrawFn, body: dict[str, Any], key: str, value: st.SearchStrategy[Any]) -> None:
    if draw(st.integers(0, 4)) > 0:
        body[key] = draw(value)


@st.composite
def provider_bodies(draw: st.DrawFn, path_name: str, payments: Payments) -> dict[str, Any]:
    """A body shaped as the provider's callbacks are, claiming an outcome."""
    ref = references(payments, BACKEND_OF[path_name])
    body: dict[str, Any] = {}
    if path_name.startswith("MTN"):
        _maybe(draw, body, "referenceId", ref)
        _maybe(draw, body, "externalId", ref)
        _maybe(draw, body, "financialTransactionId", st.integers(0, 10**10).map(str))
        _maybe(draw, body, "status", STATUSES)
        _maybe(draw, body, "amount", st.sampled_from(["5000", 5000, "0", "-1", "1e9"]))
        _maybe(draw, body, "currency", st.sampled_from(["XAF", "EUR", ""]))
        _maybe(draw, body, "payer", st.just({"partyIdType": "MSISDN", "partyId": "237670000010"}))
        _maybe(draw, body, "reason", st.sampled_from(["", "APPROVAL_REJECTED", {"code": 1}]))
    elif path_name == "PAWAPAY":
        body[draw(st.sampled_from(["depositId", "payoutId", "refundId", "id"]))] = draw(ref)
        _maybe(draw, body, "status", STATUSES)
        _maybe(draw, body, "amount", st.sampled_from(["5000", 5000, "0.00"]))
        _maybe(draw, body, "currency", st.sampled_from(["XAF", "XOF"]))
        _maybe(draw, body, "country", st.just("CMR"))
        _maybe(draw, body, "failureReason", JSON_VALUES)
        _maybe(draw, body, "metadata", JSON_VALUES)
    elif path_name == "FLUTTERWAVE":
        data: dict[str, Any] = {}
        _maybe(draw, data, "tx_ref", ref)
        _maybe(draw, data, "id", ref)
        _maybe(draw, data, "status", STATUSES)
        _maybe(draw, data, "amount", st.sampled_from([5000, "5000", 0, -1]))
        _maybe(draw, data, "currency", st.sampled_from(["XAF", "NGN"]))
        _maybe(draw, data, "processor_response", st.text(max_size=20))
        body["event"] = draw(st.sampled_from(["charge.completed", "transfer.completed", ""]))
        body["data"] = draw(st.one_of(st.just(data), st.just(data), JSON_VALUES))
    else:
        data = {}
        _maybe(draw, data, "payToken", ref)
        _maybe(draw, data, "status", STATUSES)
        _maybe(draw, data, "confirmtxnstatus", st.sampled_from(["200", "", 200]))
        _maybe(draw, data, "inittxnstatus", st.sampled_from(["200", "60019"]))
        _maybe(draw, data, "txnid", st.text(max_size=12))
        body = {"type": "payment_notification", "data": data} if draw(st.booleans()) else data
    if draw(st.integers(0, 5)) == 0:
        body.update(draw(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3)))
    return body


def _encode(obj: Any, how: str) -> bytes:
    if how == "utf-16":
        return json.dumps(obj).encode("utf-16")  # json.loads reads it too
    if how == "bom":
        return b"\xef\xbb\xbf" + json.dumps(obj).encode()
    if how == "raw":  # lone surrogates become invalid UTF-8
        return json.dumps(obj, ensure_ascii=False).encode(errors="surrogatepass")
    if how == "trailing":
        return json.dumps(obj).encode() + b" garbage"
    return json.dumps(obj).encode()


@st.composite
def bodies(draw: st.DrawFn, path_name: str, payments: Payments) -> tuple[str, bytes]:
    """(kind, bytes) of a callback body."""
    kind = draw(
        st.sampled_from(
            ["shaped", "shaped", "shaped", "shaped", "json", "bytes", "nested", "large", "bigint"]
        )
    )
    if kind == "shaped":
        how = draw(st.sampled_from(["ascii", "ascii", "ascii", "raw", "utf-16", "bom", "trailing"]))
        return kind, _encode(draw(provider_bodies(path_name, payments)), how)
    if kind == "json":
        return kind, _encode(draw(JSON_VALUES), draw(st.sampled_from(["ascii", "raw"])))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    if kind == "nested":
        # Deeper than Python's recursion limit, often still under the body limit.
        depth = draw(st.integers(min_value=900, max_value=30_000))
        opener = draw(st.sampled_from(["[", '{"a":', '{"data":']))
        return kind, (opener * depth).encode()
    if kind == "large":
        size = draw(st.sampled_from([65_535, 65_536, 65_537, 200_000]))
        return kind, b'{"referenceId":"' + b"a" * size + b'"}'
    # Integers around the length Python converts by default (4300 digits).
    digits = draw(st.integers(min_value=4000, max_value=6000))
    key = draw(st.sampled_from(["referenceId", "depositId", "payToken", "externalId"]))
    return kind, f'{{"{key}": {"9" * digits}, "data": {{"tx_ref": {"7" * digits}}}}}'.encode()


_TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+.^_`|~-"
# Hop-by-hop and framing headers would make another request, not another callback
# (Content-Encoding is drawn on its own: see callbacks()).
_FRAMING = {
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
}
HEADER_NAMES = st.one_of(
    st.text(alphabet=_TOKEN, min_size=1, max_size=20),
    st.sampled_from(
        [
            "Content-Type",
            "verif-hash",
            "flutterwave-signature",
            "Signature",
            "Signature-Input",
            "Signature-Date",
            "Content-Digest",
            "X-Reference-Id",
            "X-Callback-Url",
            "Authorization",
            "Accept",
            "Cookie",
        ]
    ),
).filter(lambda name: name.lower() not in _FRAMING)
HEADER_VALUES = st.one_of(
    # aiohttp's client refuses control characters in header values.
    st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60),
    st.text(alphabet=st.characters(exclude_categories=["Cc", "Cs"]), max_size=30),
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "identity",
            'sig-pp=("@method");alg="ecdsa-p256-sha256";keyid="x";created=1;expires=2',
            "sig-pp=:AAAA:",
            "sha-512=:AAAA:",
            "sha-256=:not base64:",
            FLUTTERWAVE_SECRET_HASH + " ",
            "a" * 8000,
        ]
    ),
)
QUERY_VALUES = st.one_of(
    st.text(max_size=30).map(lambda s: quote(s, safe="", errors="surrogatepass")),
    st.sampled_from(["%00", "%ED%A0%80", "%FF%FE", "%", "%zz", "a%00b", "", "null", "r" * 80]),
)


@dataclass(frozen=True)
class Callback:
    method: str
    query: str  # raw, already encoded
    headers: dict[str, str]
    body: bytes
    kind: str
    signed: bool  # authenticated as Flutterwave or PawaPay would authenticate it


def flutterwave_authentic(headers: dict[str, str], body: bytes) -> bool:
    """Whether a header proves the secret hash, as the server reads it (HTTP strips the
    spaces and tabs around a value)."""
    proofs = {
        "verif-hash": FLUTTERWAVE_SECRET_HASH,
        "flutterwave-signature": webhook_signature(body, FLUTTERWAVE_SECRET_HASH),
    }
    return any(proofs.get(k.lower()) == v.strip(" \t") for k, v in headers.items())


@st.composite
def callbacks(draw: st.DrawFn, path_name: str, payments: Payments, stack: Stack) -> Callback:
    kind, body = draw(bodies(path_name, payments))
    method = draw(st.sampled_from(["PUT", "POST"] if path_name.startswith("MTN") else ["POST"]))
    if draw(st.integers(0, 19)) == 19:
        method = draw(st.sampled_from(["GET", "PATCH", "DELETE", "PUT"]))
    query_parts = []
    if draw(st.integers(0, 2)) > 0:
        value = draw(
            st.one_of(
                st.sampled_from(payments.texts(BACKEND_OF[path_name])).map(
                    lambda t: quote(t, safe="")
                ),
                QUERY_VALUES,
            )
        )
        query_parts.append(f"reference={value}")
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(["reference", "status", "x", "", "reference[]"]))
        query_parts.append(f"{name}={draw(QUERY_VALUES)}")
    query = "&".join(query_parts)
    headers = draw(st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=5))
    if draw(st.booleans()):
        headers["Content-Type"] = "application/json"
    if draw(st.integers(0, 5)) == 0:
        # A Content-Encoding: the body encoded as it says, or not; codings aiohttp cannot
        # decode (brotli and zstd are not installed), or does not know.
        coding = draw(
            st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "gzip, deflate", "x-z"])
        )
        if coding in ("gzip", "deflate") and draw(st.booleans()):
            body = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
            kind += f" ({coding})"
        headers["Content-Encoding"] = coding
    signed = False
    if path_name == "FLUTTERWAVE":
        how = draw(st.sampled_from(["hash", "signature", "wrong", "none"]))
        if how == "hash":
            headers["verif-hash"] = FLUTTERWAVE_SECRET_HASH
        elif how == "signature":
            headers["flutterwave-signature"] = webhook_signature(body, FLUTTERWAVE_SECRET_HASH)
        elif how == "wrong":
            headers["verif-hash"] = draw(HEADER_VALUES)
            forged = base64.b64encode(draw(st.binary(max_size=32))).decode()
            headers["flutterwave-signature"] = forged
        signed = flutterwave_authentic(headers, body)
    if path_name == "PAWAPAY" and draw(st.booleans()):
        # Signed with the sandbox's key, as PawaPay signs: only the content is forged.
        sandbox = stack.simulators["PAWAPAY"]
        assert isinstance(sandbox, PawapaySandbox)
        signer = sandbox.callback_signer
        assert signer is not None  # the harness's sandbox signs its callbacks
        url = f"{stack.http_url}{PATHS[path_name]}" + (f"?{query}" if query else "")
        content_type = headers.get("Content-Type", "application/json")
        signature_headers = ("signature", "signature-input", "signature-date", "content-digest")
        headers = {k: v for k, v in headers.items() if k.lower() not in signature_headers}
        headers.update(signer.headers(method, url, body, content_type=content_type))
        headers["Content-Type"] = content_type
        signed = True
    return Callback(method, query, headers, body, kind, signed)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A connection per request: the server closes one after a body it cannot read, and a
    reused connection would fail the next request (not the worker's answer to it)."""
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


# -- callbacks: the property ------------------------------------------------------------------


@pytest.mark.parametrize("path_name", list(PATHS))
@settings(FUZZ, max_examples=60)
@given(data=st.data())
async def test_callbacks_never_fail_and_never_move_a_payment_the_provider_did_not(
    stack: Stack,
    payments: Payments,
    http: aiohttp.ClientSession,
    path_name: str,
    data: st.DataObject,
) -> None:
    worker = stack.workers[0]
    callback = data.draw(callbacks(path_name, payments, stack))
    url = URL(
        f"{stack.http_url}{PATHS[path_name]}" + (f"?{callback.query}" if callback.query else ""),
        encoded=True,
    )
    since = len(worker.lines)
    async with http.request(
        callback.method,
        url,
        data=callback.body,
        headers=callback.headers,
        skip_auto_headers=["Content-Type"],
    ) as response:
        status = response.status
        answer = await response.read()
    event(f"{path_name} {callback.kind}: {status} {answer[:40]!r}")
    assert status < 500, (status, answer[:300])  # 503 only when the broker is down: it is not
    assert new_errors(worker, since) == []
    assert worker.proc.returncode is None
    if path_name in ("FLUTTERWAVE", "PAWAPAY") and not callback.signed:
        assert status != 200, f"an unauthenticated callback was taken: {answer[:200]!r}"
    if b'"queued"' in answer:
        # A hint: the worker asks the provider, which still says PENDING or FAILED. Once the
        # checks are made, nothing has moved.
        ids = payments.ids()
        await until(lambda: _true(checks_settled(worker, ids)), timeout=15)
        assert await states(stack, ids) == payments.baseline
        assert new_errors(worker, since) == []


async def test_after_the_callbacks_the_payments_are_as_they_were(
    stack: Stack, payments: Payments
) -> None:
    ids = payments.ids()
    await until(lambda: _true(checks_settled(stack.workers[0], ids)), timeout=15)
    assert await states(stack, ids) == payments.baseline


# -- raw AMQP messages on kunpay.commands: what they may carry --------------------------------

OPERATIONS = ("collect", "disburse", "refund", "retry")
FRESH = "<fresh>"  # filled in at publish time: every message gets new ids
# What AMQP strings carry: any UTF-8, NUL too (stored in the dead-letter table as ␀).
AMQP_CHARS = st.characters(codec="utf-8")
SHORTSTR = st.one_of(
    st.text(AMQP_CHARS, max_size=40).filter(lambda s: len(s.encode()) <= 255),
    st.sampled_from(["\x00", "a\x00b"]),
)


@dataclass(frozen=True)
class Raw:
    """A message to publish. ``payload``: a command or another JSON value (serialised at
    publish time, with fresh ids where it holds FRESH), or bytes as they are."""

    category: str
    routing_key: str
    payload: Any
    user_id: str | None
    headers: dict[str, Any]
    properties: dict[str, Any]
    ascii_json: bool


# AMQP timestamps (whole seconds, UTC); Hypothesis takes naive bounds.
TIMESTAMPS = st.datetimes(
    min_value=datetime(1971, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
)
HEADER_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    # RabbitMQ closes the connection (INTERNAL_ERROR) on a NaN or infinite float, so no app
    # can publish one; pamqp writes floats in single precision.
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.text(AMQP_CHARS, max_size=30),
    st.sampled_from(["", "x" * 300, "é" * 100, "a\x00b"]),
    st.decimals(min_value=-1000, max_value=1000, places=2),
    TIMESTAMPS,
)
AMQP_HEADER_VALUES = st.recursive(
    HEADER_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(AMQP_CHARS, min_size=1, max_size=8), children, max_size=3),
    ),
    max_leaves=6,
)
AMQP_HEADER_NAMES = st.one_of(
    st.text(AMQP_CHARS, min_size=1, max_size=20),
    st.sampled_from(
        [
            "operation",
            "command_id",
            "transaction_id",
            "idempotency_key",
            "schema_version",
            "x-kunpay-attempt",
            "x-kunpay-reason",
            "x-kunpay-first-failure",
            "x-kunpay-message-id",
            "x-kunpay-app",
            "nul\x00",
        ]
    ),
).filter(
    # CC and BCC make RabbitMQ route copies elsewhere; fuzz-id is the test's own.
    lambda n: n not in ("CC", "BCC", "fuzz-id") and not n.startswith(("x-death", "x-first-death"))
)


@st.composite
def payment_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Business fields of a collect or disburse: right for the wire, often invalid."""
    amount = draw(
        st.one_of(
            st.decimals(min_value=1, max_value=10**6, places=0),
            st.decimals(min_value=-(10**6), max_value=10**13, places=4),
            st.sampled_from([Decimal(0), Decimal("0.5"), Decimal("-1"), Decimal("1E+3")]),
        )
    )
    return {
        "provider": draw(
            st.one_of(
                st.sampled_from(["MTN_CAMEROON", "PAWAPAY", "FLUTTERWAVE", "ORANGE_CAMEROON"]),
                st.sampled_from(["", "MTN", "mtn_cameroon"]),
                st.text(max_size=30),
                # Printed with escapes in the reason: longer than the key itself.
                st.text(
                    alphabet=st.characters(categories=["Cc", "Cf", "Zs"]),
                    min_size=150,
                    max_size=200,
                ),
            )
        ),
        "amount": str(amount),
        "currency": draw(
            st.one_of(st.sampled_from(["XAF", "XAF", "EUR", "USD", ""]), st.text(max_size=8))
        ),
        "phone_number": draw(
            st.one_of(
                st.sampled_from(["670000000", "+237 690 000 000", "620000000", "46733123450"]),
                st.from_regex(r"\A[+\d\s().-]{0,32}\Z"),
                st.text(max_size=32),
            )
        ),
        "order_id": draw(st.one_of(st.just("fuzz-order"), st.text(min_size=1, max_size=200))),
        "user_id": draw(st.one_of(st.just("u-1"), st.text(min_size=1, max_size=200))),
    }


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    """A command as the SDK writes it (its ids FRESH), with any content."""
    operation = draw(st.sampled_from(OPERATIONS))
    command: dict[str, Any] = {
        "schema_version": 1,
        "operation": operation,
        "command_id": FRESH,
        "transaction_id": FRESH,
        "idempotency_key": draw(st.one_of(st.just("k"), st.text(min_size=1, max_size=160))),
        "correlation_id": draw(st.one_of(st.none(), st.text(max_size=200))),
        "issued_at": datetime.now(UTC).isoformat(),
    }
    if operation in ("collect", "disburse"):
        command.update(draw(payment_fields()))
        command["payment_type"] = draw(
            st.one_of(st.none(), st.none(), st.text(max_size=20), st.text(min_size=41))
        )
    else:
        command["original_transaction_id"] = str(draw(st.uuids()))
        if operation == "refund":
            command["amount"] = draw(
                st.one_of(
                    st.none(), st.decimals(min_value=-100, max_value=10**6, places=2).map(str)
                )
            )
    return command


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A command with wrong types, missing or extra fields, another version or operation."""
    command: Any = draw(commands())
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["drop", "retype", "retype", "extra", "version", "operation"]))
        name = draw(st.sampled_from(sorted(command)))
        if how == "drop":
            command.pop(name)
        elif how == "retype":
            command[name] = draw(JSON_VALUES)
        elif how == "extra":
            command[draw(st.text(max_size=10))] = draw(JSON_VALUES)
        elif how == "version":
            command["schema_version"] = draw(st.sampled_from([0, 2, "1", None, 1.5]))
        else:
            command["operation"] = draw(st.sampled_from(["COLLECT", "pay", "", None, 1]))
        if not command:
            break
    return draw(st.sampled_from([command, command, command, [command], {"command": command}]))


@st.composite
def raw_messages(draw: st.DrawFn) -> Raw:
    category = draw(
        st.sampled_from(
            [
                "command",
                "command",
                "conflict",
                "wrong-types",
                "wrong-types",
                "wrong-types",
                "wrong-transaction-id",
                "json",
                "bytes",
                "huge",
                "no-user",
            ]
        )
    )
    payload: Any
    if category in ("command", "conflict", "no-user"):
        payload = draw(commands())
    elif category == "wrong-types":
        payload = draw(mutated())
    elif category == "wrong-transaction-id":
        payload = draw(commands()) | {"transaction_id": str(draw(st.uuids()))}
    elif category == "json":
        payload = draw(JSON_VALUES)
    elif category == "bytes":
        payload = draw(st.binary(max_size=200))
    else:
        size = draw(st.sampled_from([2**20, 3 * 2**20]))
        shape = draw(st.sampled_from(["random", "long-field", "nested"]))
        if shape == "random":
            payload = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
        elif shape == "long-field":
            payload = b'{"operation":"collect","order_id":"' + b"o" * size + b'"}'
        else:
            payload = b"[" * size
    headers = draw(st.dictionaries(AMQP_HEADER_NAMES, AMQP_HEADER_VALUES, max_size=4))
    return Raw(
        category=category,
        routing_key=draw(st.sampled_from(topology.COMMAND_ROUTING_KEYS)),
        payload=payload,
        user_id=None if category == "no-user" else APP,
        headers=headers,
        properties={
            "content_type": draw(st.one_of(st.just("application/json"), st.none(), SHORTSTR)),
            "content_encoding": draw(st.one_of(st.none(), SHORTSTR)),
            # Longer than the dead-letter table's 200 characters too (a short string: 255 bytes).
            "message_id": draw(
                st.one_of(
                    st.none(),
                    st.just(FRESH),
                    SHORTSTR,
                    st.sampled_from(["m" * 200, "m" * 201, "m" * 255, "é" * 127]),
                )
            ),
            "correlation_id": draw(st.one_of(st.none(), SHORTSTR)),
            "type": draw(st.one_of(st.none(), st.sampled_from(OPERATIONS), SHORTSTR)),
            "app_id": draw(st.one_of(st.none(), SHORTSTR)),
            "priority": draw(st.one_of(st.none(), st.integers(0, 255))),
            "delivery_mode": draw(
                st.sampled_from(
                    [aio_pika.DeliveryMode.PERSISTENT, aio_pika.DeliveryMode.NOT_PERSISTENT]
                )
            ),
            "timestamp": draw(st.one_of(st.none(), TIMESTAMPS)),
        },
        ascii_json=draw(st.booleans()),
    )


def fill(payload: Any) -> Any:
    """Fresh ids where the payload asks for them; the transaction id the app and key give."""
    if not isinstance(payload, dict):
        return payload
    command = dict(payload)
    key = command.get("idempotency_key")
    if isinstance(key, str) and key:
        command["idempotency_key"] = key = f"{key}-{uuid.uuid4().hex}"  # never used before
    if command.get("command_id") == FRESH:
        command["command_id"] = str(uuid.uuid4())
    if command.get("transaction_id") == FRESH:
        command["transaction_id"] = str(
            transaction_id_for(APP, str(command.get("operation")), str(key))
        )
    return command


def serialise(payload: Any, *, ascii_json: bool) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return json.dumps(payload, ensure_ascii=ascii_json).encode(errors="surrogatepass")


@dataclass(frozen=True)
class Fate:
    dead_letter: str | None = None  # its reason, when the message is dead-lettered
    command: Any = None  # otherwise, the command the worker takes in


def fate(body: bytes, user_id: str | None) -> Fate:
    """The worker's own verdict (``handlers.parse_command``: identity, schema, storable text,
    transaction id): a dead letter with its reason, or a command to take in."""
    message = SimpleNamespace(body=body, user_id=user_id)
    delivery = Delivery(cast(AbstractIncomingMessage, message), attempt=1, max_attempts=10)
    try:
        _, command = parse_command(delivery)
    except Reject as verdict:
        return Fate(dead_letter=verdict.reason)
    return Fate(command=command)


def rejection(command: Any) -> str | None:
    """The exact reason a taken-in command is REJECTED for its content (None: it is not; a
    backend may still be unable to do it, which is another rejection)."""
    if command.operation in ("refund", "retry"):
        return f"NOT_FOUND: no transaction {command.original_transaction_id} to {command.operation}"
    try:
        validate_payment(
            provider=command.provider,
            amount=command.amount,
            currency=command.currency,
            phone_number=command.phone_number,
            order_id=command.order_id,
            user_id=command.user_id,
        )
    except ValidationError as exc:
        return bounded(f"INVALID: {exc}")
    if command.payment_type is not None:  # the tests define no payment type of that name
        return bounded(f"INVALID: no active payment type {command.payment_type!r}")
    return None


@dataclass
class Publisher:
    """An app's own publisher: confirms, mandatory, straight to kunpay.commands."""

    exchange: AbstractExchange

    async def send(self, raw: Raw, body: bytes, fuzz_id: str, *, again: bool = False) -> None:
        properties = dict(raw.properties)
        if properties["message_id"] == FRESH or again:
            properties["message_id"] = str(uuid.uuid4())  # a message id is never reused
        message = aio_pika.Message(
            body=body,
            headers={**raw.headers, "fuzz-id": fuzz_id},
            user_id=raw.user_id,
            **properties,
        )
        await self.exchange.publish(message, routing_key=raw.routing_key, mandatory=True)


@pytest.fixture
async def amqp(stack: Stack) -> AsyncIterator[Publisher]:
    async with await aio_pika.connect(stack.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield Publisher(await channel.get_exchange(topology.COMMANDS_EXCHANGE, ensure=True))


async def dead_letter_of(stack: Stack, fuzz_id: str) -> dict[str, Any] | None:
    for row in await stack.db.fetch("SELECT reason, app, message_id, headers FROM dead_letters"):
        headers = row["headers"]
        headers = json.loads(headers) if isinstance(headers, str) else headers
        if isinstance(headers, dict) and headers.get("fuzz-id") == fuzz_id:
            return row
    return None


async def awaited(find: Callable[[], Awaitable[Row | None]], timeout: float = 10) -> Row:
    """What ``find()`` returns once it is not None (rows nothing announces)."""
    found: Row | None = None

    async def seen() -> bool:
        nonlocal found
        found = await find()
        return found is not None

    await until(seen, timeout=timeout)
    assert found is not None
    return found


def _id(stack: Stack, value: uuid.UUID) -> uuid.UUID | str:
    return value if stack.db.kind == "postgres" else str(value)


async def inbox_of(stack: Stack, command_id: uuid.UUID) -> dict[str, Any] | None:
    rows = await stack.db.fetch(
        "SELECT outcome, reason, transaction_id FROM inbox WHERE command_id = $1",
        _id(stack, command_id),
    )
    return rows[0] if rows else None


async def transaction_of(stack: Stack, transaction_id: uuid.UUID) -> dict[str, Any]:
    rows = await stack.db.fetch(
        "SELECT status, failure_reason FROM transactions WHERE id = $1", _id(stack, transaction_id)
    )
    assert rows, f"no transaction {transaction_id}"
    return rows[0]


async def publish_and_check(
    stack: Stack, client: KunPayClient, amqp: Publisher, raw: Raw, payload: Any
) -> str:
    """Publish one message and check its fate; returns what happened, for the statistics."""
    body = serialise(payload, ascii_json=raw.ascii_json)
    expected = fate(body, raw.user_id)
    fuzz_id = uuid.uuid4().hex
    await amqp.send(raw, body, fuzz_id)
    if expected.dead_letter is not None:
        row = await awaited(lambda: dead_letter_of(stack, fuzz_id))
        assert row["reason"] == expected.dead_letter, row
        assert row["app"] == raw.user_id
        return f"dead letter: {expected.dead_letter}"
    command = expected.command
    inbox = await awaited(lambda: inbox_of(stack, command.command_id))
    assert inbox["outcome"] == "ACCEPTED", inbox
    assert str(inbox["transaction_id"]) == str(command.transaction_id)
    tx = await transaction_of(stack, command.transaction_id)
    reason = rejection(command)
    if reason is None:
        assert not (
            tx["status"] == "REJECTED" and str(tx["failure_reason"]).startswith("INVALID:")
        ), tx
        return f"taken in: {tx['status']}"
    assert (tx["status"], tx["failure_reason"]) == ("REJECTED", reason)
    final = await client.wait(command.transaction_id, timeout=15)
    assert final.type is EventType.REJECTED
    assert final.transaction is not None
    assert final.transaction.status is Status.REJECTED
    assert final.transaction.failure_reason == reason
    return "rejected"


async def conflict(stack: Stack, amqp: Publisher, raw: Raw, payload: dict[str, Any]) -> None:
    """The key of a command taken in, again with other content: refused by command id, and
    the first one's transaction untouched."""
    first = fate(serialise(payload, ascii_json=True), APP).command
    before = await transaction_of(stack, first.transaction_id)
    other = {**payload, "command_id": str(uuid.uuid4())}
    if first.operation in ("collect", "disburse"):
        other["order_id"] = f"{payload['order_id'][:150]}-other"
    else:
        other["original_transaction_id"] = str(uuid.uuid4())
    body = serialise(other, ascii_json=raw.ascii_json)
    second = fate(body, APP).command
    await amqp.send(raw, body, uuid.uuid4().hex, again=True)
    inbox = await awaited(lambda: inbox_of(stack, second.command_id))
    assert inbox["outcome"] == "REJECTED", inbox
    assert str(inbox["reason"]).startswith("IDEMPOTENCY_CONFLICT: "), inbox
    assert await transaction_of(stack, first.transaction_id) == before


@pytest.fixture(scope="module")
def log_start(stack: Stack) -> int:
    """Where the worker's log stood when this module's raw messages began."""
    return len(stack.workers[0].lines)


# -- raw AMQP messages: the property ----------------------------------------------------------


@settings(FUZZ, max_examples=100)
@given(raw=raw_messages())
async def test_raw_commands_are_dead_lettered_or_rejected_as_the_contract_says(
    stack: Stack, client: KunPayClient, amqp: Publisher, log_start: int, raw: Raw
) -> None:
    worker = stack.workers[0]
    since = len(worker.lines)
    payload = fill(raw.payload)
    outcome = await publish_and_check(stack, client, amqp, raw, payload)
    if raw.category == "conflict" and not outcome.startswith("dead letter"):
        await conflict(stack, amqp, raw, payload)
        outcome += ", then a conflict"
    event(f"{raw.category}: {outcome}")
    if outcome.startswith("dead letter"):
        for awkward in _awkward_for_the_table(raw):
            event(f"dead letter with {awkward}")
    assert worker.proc.returncode is None
    assert new_errors(worker, since) == []


def _awkward_for_the_table(raw: Raw) -> list[str]:
    """What in a message once kept its dead letter out of the table (for the statistics)."""
    found = []
    if "\\x00" in repr((raw.headers, raw.properties)):
        found.append("NUL")
    original = raw.headers.get("x-kunpay-message-id", raw.properties.get("message_id"))
    if original is not None and (not isinstance(original, str) or len(original) > 200):
        found.append("a long or non-text message id")
    return found


async def test_after_the_raw_commands_a_valid_collect_still_completes(
    stack: Stack, client: KunPayClient, log_start: int
) -> None:
    worker = stack.workers[0]
    assert worker.proc.returncode is None
    accepted = await client.collect(**{**GOOD, "order_id": "after-the-fuzz"})
    final = await client.wait(accepted.transaction_id, timeout=30)
    assert final.type is EventType.SUCCEEDED
    assert new_errors(worker, log_start) == []


# -- requests through the SDK -----------------------------------------------------------------

TEXTS = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.text(min_size=39, max_size=45),
    st.sampled_from(["", "\x00", "a\x00b", "mtn-mobile-money", "x" * 200]),
)
AMOUNTS = st.one_of(
    st.decimals(min_value=1, max_value=10**9, places=0),
    st.decimals(allow_nan=True, places=2),
    st.integers(),
    st.none(),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    method = draw(st.sampled_from(["get", "verify", "list", "quote", "balance", "account_holder"]))
    ids = st.one_of(st.uuids(), st.uuids().map(str), st.text(max_size=10))
    providers = st.one_of(
        st.sampled_from(["MTN_CAMEROON", "PAWAPAY", "FLUTTERWAVE", "ORANGE_CAMEROON"]),
        st.text(max_size=20),
    )
    phones = st.one_of(
        st.sampled_from(["670000000", "690000040", "+237 670 000 040", "620000000"]),
        st.text(max_size=20),
    )
    if method in ("get", "verify"):
        return method, {"transaction_id": draw(ids)}
    if method == "list":
        return method, {
            "order_id": draw(TEXTS),
            "user_id": draw(TEXTS),
            "status": draw(st.one_of(st.none(), st.sampled_from([s.value for s in Status]))),
            "limit": draw(st.integers(1, 500)),
        }
    if method == "quote":
        return method, {"payment_type": draw(TEXTS), "net_amount": draw(AMOUNTS)}
    if method == "balance":
        return method, {"provider": draw(providers)}
    return method, {"provider": draw(providers), "phone_number": draw(phones)}


# What the worker answers a request it cannot serve; "unavailable" means it failed.
ANSWERS = {"not_found", "invalid", "unsupported", "forbidden", "provider_unavailable"}


@settings(FUZZ, max_examples=60)
@given(request=requests())
async def test_requests_are_refused_by_the_sdk_or_answered(
    stack: Stack, client: KunPayClient, request: tuple[str, dict[str, Any]]
) -> None:
    worker = stack.workers[0]
    since = len(worker.lines)
    method, kwargs = request
    try:
        await getattr(client, method)(**kwargs, timeout=15)
    except ValueError:
        outcome = "refused by the SDK"
    except TransactionNotFound:
        outcome = "not_found"
    except RemoteError as exc:
        outcome = exc.code
    else:
        outcome = "ok"
    event(f"{method}: {outcome}")
    assert outcome in {"refused by the SDK", "ok", *ANSWERS}
    assert new_errors(worker, since) == []


# -- what the properties found: each once a bug, now handled ---------------------------------


async def test_a_dead_letter_with_a_long_message_id_is_stored(
    stack: Stack, amqp: Publisher
) -> None:
    # dead_letters.message_id holds 200 characters: the row was refused, the message held.
    raw = Raw("bytes", "collect", b"", APP, {}, {"message_id": "m" * 255}, True)
    fuzz_id = uuid.uuid4().hex
    await amqp.send(raw, b"not a command", fuzz_id)
    row = await awaited(lambda: dead_letter_of(stack, fuzz_id), timeout=10)
    assert len(row["message_id"]) == 200  # cut, ending with a hash of the whole
    assert row["message_id"].startswith("m" * 183 + "…")


async def test_a_dead_letter_with_nul_in_a_header_is_stored_with_the_symbol_for_null(
    stack: Stack, amqp: Publisher
) -> None:
    # PostgreSQL's jsonb and text refuse NUL: the row was refused, the message held.
    headers = {"note": "a\x00b"}
    properties = {"message_id": "id\x00", "correlation_id": "c\x00"}
    raw = Raw("bytes", "collect", b"", APP, headers, properties, True)
    fuzz_id = uuid.uuid4().hex
    await amqp.send(raw, b"not a command", fuzz_id)
    row = await awaited(lambda: dead_letter_of(stack, fuzz_id), timeout=10)
    stored = row["headers"]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored["note"] == "a\u2400b"
    assert row["message_id"] == "id\u2400"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_a_body_that_does_not_decode_is_refused_with_a_warning_not_an_error(
    stack: Stack, http: aiohttp.ClientSession, coding: str
) -> None:
    # aiohttp logged 'Unhandled exception' (gzip, deflate: its read of the rest of a body
    # already answered 400) or 'Error handling request' (a coding it cannot decode) as errors.
    worker = stack.workers[0]
    since = len(worker.lines)
    async with http.post(
        f"{stack.http_url}{PATHS['MTN_COLLECTION']}",
        data=b"not compressed at all" * 100,
        headers={"Content-Encoding": coding},
    ) as response:
        assert response.status == 400

    def warned() -> bool:
        return any(
            r.get("logger") == "aiohttp.server" and r.get("level") == "warning"
            for r in worker.lines[since:]
        )

    await until(lambda: _true(warned()), timeout=10)
    assert new_errors(worker, since) == []


async def test_a_key_reused_with_other_content_is_refused_whatever_its_characters(
    stack: Stack, client: KunPayClient
) -> None:
    # Quoted with escapes the key made the reason longer than inbox.reason: the command was
    # retried forever.
    key = "\x01" * 150 + uuid.uuid4().hex[:8]  # the SDK takes it; quoted, 610 characters
    first = await client.collect(**{**GOOD, "idempotency_key": key})
    await awaited(lambda: inbox_of(stack, first.command_id))
    second = await client.collect(**{**GOOD, "order_id": "other", "idempotency_key": key})
    inbox = await awaited(lambda: inbox_of(stack, second.command_id), timeout=10)
    assert inbox["outcome"] == "REJECTED"
    assert str(inbox["reason"]).startswith("IDEMPOTENCY_CONFLICT: key '\\x01")
    assert str(inbox["reason"]).endswith("with different content")
