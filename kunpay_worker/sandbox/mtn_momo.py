"""MTN MoMo collection, simulated: token, request to pay, status, callbacks (PUT or POST).

Strict where MTN is strict: a missing subscription key or bad token is 401, an X-Reference-Id
that is not a version-4 UUID is 400, a reused one is 409, an empty payerMessage/payeeNote is a
500 (as MTN has answered in production). The payer's number picks the outcome (scenarios.py).
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from kunpay_worker.sandbox.scenarios import Behaviour, Scenario, scenario_for

__all__ = ["MtnSandbox"]

log = structlog.get_logger("kunpay.sandbox.mtn")

_AMOUNT = re.compile(r"^\d+(\.\d{1,2})?$")
_MSISDN = re.compile(r"^\d{8,15}$")
_CURRENCY_EXPONENT = {"XAF": 0, "EUR": 2}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


@dataclass
class Payment:
    reference: str
    amount: str
    currency: str
    payer: str
    external_id: str
    scenario: Scenario
    created: float
    callback_url: str | None
    financial_id: str = field(default_factory=lambda: str(secrets.randbelow(10**9) + 10**9))


class MtnSandbox:
    def __init__(
        self,
        *,
        settle_seconds: float,
        slow_seconds: float,
        callback_method: str,
        token_ttl: int = 3600,
        clock: Any = time.monotonic,
    ) -> None:
        self.settle_seconds = settle_seconds
        self.slow_seconds = slow_seconds
        self.callback_method = callback_method
        self.token_ttl = token_ttl
        self.clock = clock
        self.tokens: dict[str, float] = {}
        self.payments: dict[str, Payment] = {}
        self.request_to_pay: Counter[str] = Counter()
        self.status_lookups: Counter[str] = Counter()
        self.tokens_issued = 0
        self._release = asyncio.Event()
        self.held = 0
        self._held_changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/collection/token/", self.token),
            web.post("/collection/v1_0/requesttopay", self.create_request_to_pay),
            web.get("/collection/v1_0/requesttopay/{reference}", self.get_request_to_pay),
            web.get("/_sandbox/mtn/requests", self.counts),
            web.post("/_sandbox/mtn/release", self.release_endpoint),
            web.post("/_sandbox/mtn/revoke-tokens", self.revoke_endpoint),
        ]

    # -- test and operator controls ----------------------------------------------------------

    def counts_body(self) -> dict[str, Any]:
        return {
            "request_to_pay": dict(self.request_to_pay),
            "registered": sorted(self.payments),
            "status_lookups": dict(self.status_lookups),
            "tokens_issued": self.tokens_issued,
            "held": self.held,
        }

    async def counts(self, _request: web.Request) -> web.Response:
        return web.json_response(self.counts_body())

    def release(self) -> None:
        """Answer every held request to pay (and any that arrives later, until re-armed)."""
        self._release.set()

    def hold_again(self) -> None:
        self._release = asyncio.Event()

    async def release_endpoint(self, _request: web.Request) -> web.Response:
        held = self.held
        self.release()
        return web.json_response({"released": held})

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    async def revoke_endpoint(self, _request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.json_response({"revoked": True})

    async def wait_held(self, count: int) -> None:
        async with self._held_changed:
            await self._held_changed.wait_for(lambda: self.held >= count)

    async def close(self) -> None:
        self.release()
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # -- auth --------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        if not request.headers.get("Ocp-Apim-Subscription-Key"):
            return _error(
                401, "MISSING_SUBSCRIPTION_KEY", "Access denied due to missing subscription key."
            )
        auth = request.headers.get("Authorization", "")
        try:
            user, _, key = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user, key = "", ""
        if not auth.startswith("Basic ") or not user or not key:
            return _error(401, "INVALID_CREDENTIALS", "Basic auth with API user and key required.")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock() + self.token_ttl
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "token_type": "access_token", "expires_in": self.token_ttl}
        )

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if not request.headers.get("Ocp-Apim-Subscription-Key"):
            return _error(
                401, "MISSING_SUBSCRIPTION_KEY", "Access denied due to missing subscription key."
            )
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        expiry = self.tokens.get(token)
        if expiry is None or expiry < self.clock():
            return _error(401, "INVALID_TOKEN", "Access token is missing, invalid or expired.")
        if not request.headers.get("X-Target-Environment"):
            return _error(400, "MISSING_TARGET_ENVIRONMENT", "X-Target-Environment is required.")
        return None

    # -- request to pay ----------------------------------------------------------------------

    async def create_request_to_pay(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        reference = request.headers.get("X-Reference-Id", "")
        try:
            parsed = uuid.UUID(reference)
        except ValueError:
            parsed = None
        if parsed is None or parsed.version != 4 or str(parsed) != reference.lower():
            return _error(400, "INVALID_REFERENCE_ID", "X-Reference-Id must be a UUID version 4.")
        self.request_to_pay[reference] += 1
        if reference in self.payments:
            return _error(
                409,
                "RESOURCE_ALREADY_EXIST",
                "Duplicated reference id. Creation of resource failed.",
            )
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "INVALID_JSON", "The body is not JSON.")
        problem = _validate_body(body)
        if problem is not None:
            return _error(400, "BAD_REQUEST", problem)
        if not body.get("payerMessage") or not body.get("payeeNote"):
            # What MTN has done in production with empty texts.
            return _error(500, "INTERNAL_PROCESSING_ERROR", "An internal error occurred.")
        payer = body["payer"]["partyId"]
        scenario = scenario_for(payer)
        behaviour = scenario.behaviour
        if behaviour is Behaviour.ERROR_ALWAYS or (
            behaviour is Behaviour.ERROR_ONCE and self.request_to_pay[reference] == 1
        ):
            return _error(500, "INTERNAL_PROCESSING_ERROR", "An internal error occurred.")
        self._register(reference, body, scenario, request.headers.get("X-Callback-Url"))
        if behaviour is Behaviour.ERROR_AFTER_ACCEPT:
            return _error(500, "INTERNAL_PROCESSING_ERROR", "An internal error occurred.")
        if behaviour is Behaviour.HOLD:
            await self._hold()
        elif behaviour is Behaviour.SLOW:
            await asyncio.sleep(self.slow_seconds)
        return web.Response(status=202)

    async def _hold(self) -> None:
        async with self._held_changed:
            self.held += 1
            self._held_changed.notify_all()
        try:
            await self._release.wait()
        finally:
            async with self._held_changed:
                self.held -= 1
                self._held_changed.notify_all()

    def _register(
        self, reference: str, body: dict[str, Any], scenario: Scenario, callback_url: str | None
    ) -> None:
        self.payments[reference] = Payment(
            reference=reference,
            amount=body["amount"],
            currency=body["currency"],
            payer=body["payer"]["partyId"],
            external_id=str(body.get("externalId", "")),
            scenario=scenario,
            created=self.clock(),
            callback_url=callback_url,
        )
        if callback_url and scenario.behaviour is not Behaviour.PENDING:
            loop = asyncio.get_running_loop()
            loop.call_later(self.settle_seconds, self._spawn_callback, reference)

    def _status_body(self, payment: Payment) -> dict[str, Any]:
        settled = self.clock() - payment.created >= self.settle_seconds
        body: dict[str, Any] = {
            "amount": payment.amount,
            "currency": payment.currency,
            "externalId": payment.external_id,
            "payer": {"partyIdType": "MSISDN", "partyId": payment.payer},
            "payerMessage": "kunpay sandbox",
            "payeeNote": "kunpay sandbox",
            "status": "PENDING",
        }
        behaviour = payment.scenario.behaviour
        if not settled or behaviour is Behaviour.PENDING:
            return body
        if behaviour is Behaviour.FAIL:
            body.update(status="FAILED", reason=payment.scenario.reason)
        else:
            body.update(status="SUCCESSFUL", financialTransactionId=payment.financial_id)
        return body

    async def get_request_to_pay(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        reference = request.match_info["reference"]
        self.status_lookups[reference] += 1
        payment = self.payments.get(reference)
        if payment is None:
            return _error(404, "RESOURCE_NOT_FOUND", "Requested resource was not found.")
        return web.json_response(self._status_body(payment))

    # -- callbacks ---------------------------------------------------------------------------

    def _spawn_callback(self, reference: str) -> None:
        task = asyncio.create_task(self._callback(reference))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _callback(self, reference: str) -> None:
        payment = self.payments[reference]
        assert payment.callback_url is not None  # noqa: S101
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10, connect=5)
            )
        body = self._status_body(payment)
        body["referenceId"] = reference
        try:
            async with self._session.request(
                self.callback_method, payment.callback_url, json=body
            ) as resp:
                log.info("callback sent", reference=reference, status=resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # MTN's own pages disagree on retries; the sandbox sends once, like the stricter one.
            log.info("callback failed", reference=reference, error=repr(exc))


def _validate_body(body: object) -> str | None:
    if not isinstance(body, dict):
        return "The body must be a JSON object."
    amount, currency = body.get("amount"), body.get("currency")
    if not isinstance(amount, str) or not _AMOUNT.match(amount):
        return 'amount must be a decimal string such as "5000".'
    if currency not in _CURRENCY_EXPONENT:
        return f"currency {currency!r} is not supported."
    if _CURRENCY_EXPONENT[currency] == 0 and "." in amount:
        return f"{currency} amounts have no decimals."
    payer = body.get("payer")
    if not isinstance(payer, dict) or payer.get("partyIdType") != "MSISDN":
        return "payer.partyIdType must be MSISDN."
    if not isinstance(payer.get("partyId"), str) or not _MSISDN.match(payer["partyId"]):
        return "payer.partyId must be the number's digits with the country code."
    if not isinstance(body.get("externalId", ""), str):
        return "externalId must be a string."
    return None
