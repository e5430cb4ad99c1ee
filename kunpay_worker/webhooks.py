"""The worker's HTTP server: provider callbacks, ``/healthz`` and ``/readyz``.

A callback is a **hint**. It is authenticated where the provider allows it (Flutterwave's
``verif-hash`` / ``flutterwave-signature``, PawaPay's RFC 9421 signature when enabled; MTN and
Orange sign nothing), matched to a transaction, and turned into a coalesced "check now" message
on the poll queue: the worker asks the provider before any transition, so a forged callback
changes nothing, and a flood of them costs at most one provider lookup per transaction per
coalescing window. The work happens from the queue; the answer is immediate.

Answers: 200 (queued, or coalesced), 400 (not JSON, or no reference), 401 (bad signature), 404
(no such transaction; Flutterwave, which sends every account event, gets 200), 413 (too large),
503 (the check could not be queued, or anything unexpected: the provider retries). Never 500.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq.exceptions
import structlog
from aiohttp import web

from kunpay_sdk import topology
from kunpay_worker.messaging import Publisher
from kunpay_worker.metrics import Metrics
from kunpay_worker.providers.flutterwave.transformers import webhook_is_authentic
from kunpay_worker.providers.pawapay.callbacks import CallbackRejected, CallbackVerifier
from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.models import Transaction

__all__ = ["PATHS", "Webhooks"]

log = structlog.get_logger("kunpay.webhooks")

PUBLISH_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError)

PATHS = {
    "FLUTTERWAVE": "/payments/flutterwave/webhook/",
    "PAWAPAY": "/payments/pawapay/webhook/",
    "MTN_COLLECTION": "/payments/momo/collection/webhook/",
    "MTN_DISBURSEMENT": "/payments/momo/disbursement/webhook/",
    "ORANGE_MP": "/payments/orange/webhook/",
}

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class CallbackError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _answer(http_status: int, /, **body: Any) -> web.Response:
    return web.json_response(body, status=http_status)


@web.middleware
async def _never_500(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except CallbackError as exc:
        log.info("callback refused", path=request.path, status=exc.status, reason=exc.message)
        return _answer(exc.status, error=exc.message)
    except web.RequestPayloadError:  # a body aiohttp cannot decode (its Content-Encoding)
        log.info("callback refused", path=request.path, status=400, reason="unreadable body")
        return _answer(400, error="the body could not be read")
    except web.HTTPException:
        raise  # 404 for unknown paths, 405, 413 from aiohttp itself
    except Exception as exc:  # a provider must never see a 500: it retries a 503
        if not db.unavailable(exc):
            log.exception("callback handling failed", path=request.path)
        else:
            log.warning("database unavailable; callback answered 503", path=request.path)
        return _answer(503, error="temporarily unavailable")


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except RecursionError as exc:  # nested deeper than the interpreter's recursion limit
        raise CallbackError(400, "the body is nested too deeply") from exc
    except ValueError as exc:
        raise CallbackError(400, "the body is not JSON") from exc
    if not isinstance(body, dict):
        raise CallbackError(400, "the body is not a JSON object")
    return body


# The columns callbacks are matched on: transactions.provider_reference (our reference) and
# transactions.provider_handle (the provider's id). A longer value names no transaction, and a
# lookup with it would fail the column's length check.
REFERENCE_LENGTH = 64
HANDLE_LENGTH = 128


def _text(value: object, max_length: int = REFERENCE_LENGTH) -> str | None:
    """A reference given as a string or a number, or None when it cannot name a transaction:
    empty, longer than the column, or text no database column holds (NUL, lone surrogates),
    which a lookup would fail on."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    text = str(value)
    if not text or len(text) > max_length or "\x00" in text:
        return None
    try:
        text.encode()
    except UnicodeEncodeError:
        return None
    return text


def _uuid(value: object) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class Webhooks:
    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        readiness: Readiness,
        pawapay: CallbackVerifier | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.readiness = readiness
        self.pawapay_verifier = pawapay
        self.metrics = metrics

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.server.max_body_bytes, middlewares=[_never_500]
        )
        app.add_routes(
            [
                web.post(PATHS["FLUTTERWAVE"], self.flutterwave),
                web.post(PATHS["PAWAPAY"], self.pawapay),
                web.put(PATHS["MTN_COLLECTION"], self.mtn),
                web.post(PATHS["MTN_COLLECTION"], self.mtn),
                web.put(PATHS["MTN_DISBURSEMENT"], self.mtn),
                web.post(PATHS["MTN_DISBURSEMENT"], self.mtn),
                web.post(PATHS["ORANGE_MP"], self.orange),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
            ]
        )
        if self.metrics is not None:
            app.add_routes([web.get("/metrics", self.scrape)])
        return app

    # -- health ------------------------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return _answer(200, status="ok")

    async def readyz(self, _request: web.Request) -> web.Response:
        ready, details = await self.readiness()
        return _answer(200 if ready else 503, status="ready" if ready else "not ready", **details)

    async def scrape(self, _request: web.Request) -> web.Response:
        assert self.metrics is not None  # noqa: S101 - routed only with metrics
        body = await self.metrics.render()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    # -- callbacks ---------------------------------------------------------------------------

    async def mtn(self, request: web.Request) -> web.Response:
        body = _object(await request.read())
        # The reference rides in the callback URL we gave MTN; the body may name it too.
        reference = _text(request.query.get("reference")) or _text(body.get("referenceId"))
        external = _uuid(body.get("externalId"))
        if reference is None and external is None:
            raise CallbackError(400, "no reference and no externalId")
        tx = await repo.find_for_callback("MTN_MOMO", reference=reference, transaction_id=external)
        return await self._hint(tx, "MTN_MOMO")

    async def pawapay(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.settings.pawapay.verify_callbacks:
            if self.pawapay_verifier is None:
                raise CallbackError(401, "callback verification is not set up")
            try:
                await self.pawapay_verifier.verify(
                    method=request.method,
                    url=self._signed_url(request),
                    headers=request.headers,
                    body=raw,
                )
            except CallbackRejected as exc:
                raise CallbackError(401, f"signature rejected: {exc.reason}") from exc
        body = _object(raw)
        reference = next(
            (
                text
                for key in ("depositId", "payoutId", "refundId")
                if (text := _text(body.get(key)))
            ),
            None,
        )
        if reference is None:
            raise CallbackError(400, "no depositId, payoutId or refundId")
        tx = await repo.find_for_callback("PAWAPAY", reference=reference)
        return await self._hint(tx, "PAWAPAY")

    def _signed_url(self, request: web.Request) -> str:
        """The URL PawaPay called: behind a proxy that rewrites the host or strips a path prefix,
        the public base URL says what it was."""
        base = self.settings.public_base_url
        if base:
            return f"{base.rstrip('/')}{request.path_qs}"
        return str(request.url)

    async def flutterwave(self, request: web.Request) -> web.Response:
        raw = await request.read()
        secret = self.settings.flutterwave.webhook_secret_hash
        if secret is None or not webhook_is_authentic(
            request.headers, raw, secret.get_secret_value()
        ):
            raise CallbackError(401, "missing or wrong verif-hash / flutterwave-signature")
        body = _object(raw)
        data = body.get("data")
        if not isinstance(data, dict):
            raise CallbackError(400, "no data")
        tx_ref, charge_id = _text(data.get("tx_ref")), _text(data.get("id"), HANDLE_LENGTH)
        if tx_ref is None and charge_id is None:
            raise CallbackError(400, "no tx_ref and no id")
        tx = await repo.find_for_callback("FLUTTERWAVE", reference=tx_ref, handle=charge_id)
        if tx is None:
            # Flutterwave sends every event of the account: not all are ours to act on.
            log.info(
                "flutterwave event for no transaction of ours", flutterwave_event=body.get("event")
            )
            return _answer(200, status="ignored")
        return await self._hint(tx, "FLUTTERWAVE")

    async def orange(self, request: web.Request) -> web.Response:
        body = _object(await request.read())
        nested = body.get("data")
        data: dict[str, Any] = nested if isinstance(nested, dict) else body
        reference = _text(request.query.get("reference"))
        pay_token = _text(data.get("payToken"), HANDLE_LENGTH)
        if reference is None and pay_token is None:
            raise CallbackError(400, "no reference and no payToken")
        tx = await repo.find_for_callback("ORANGE_MP", reference=reference, handle=pay_token)
        return await self._hint(tx, "ORANGE_MP")

    async def _hint(self, tx: Transaction | None, backend: str) -> web.Response:
        if tx is None:
            raise CallbackError(404, f"no {backend} transaction with that reference")
        at = await repo.claim_hint(tx.id, self.settings.server.coalesce_window)
        if at is None:
            return _answer(200, status="ok", check="coalesced")
        message = aio_pika.Message(
            body=json.dumps({"transaction_id": str(tx.id), "check": "now"}).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(uuid.uuid4()),
            type="check",
        )
        try:
            async with asyncio.timeout(10):
                await self.publisher.publish("", topology.POLL_QUEUE, message)
        except PUBLISH_ERRORS as exc:
            await repo.release_hint(tx.id, at)
            log.warning("could not queue a check for a callback", error=repr(exc))
            return _answer(503, error="could not queue the check; retry later")
        log.info("callback: check queued", transaction_id=str(tx.id), backend=backend)
        return _answer(200, status="ok", check="queued")
