"""Flutterwave v3 simulated: francophone mobile money charges, verification by id and by
``tx_ref``, refunds and their lookup, and charge webhooks.

Routes (Flutterwave's real paths)::

    POST /v3/charges?type=mobile_money_franco
    GET  /v3/transactions/{id}/verify
    GET  /v3/transactions/verify_by_reference?tx_ref=...
    POST /v3/transactions/{id}/refund          {amount?, comments?}
    GET  /v3/refunds/{id}
    GET  /_sandbox/flutterwave/requests, POST /_sandbox/flutterwave/release

Strict where Flutterwave is strict: without ``Authorization: Bearer FLWSECK...`` (the form of a
Flutterwave secret key; the sandbox cannot know the configured one) every call is 401. Bad
input is an ``{"status": "error", "message": ...}`` answer with HTTP 400: a missing ``email`` or
``tx_ref``, a phone number that is not 8-15 digits, an amount that is not a positive number of
whole francs, a currency other than the country's (CM → XAF), an unknown network.

Flutterwave does **not** de-duplicate by ``tx_ref``: a second charge with the same ``tx_ref`` is
a second charge with its own id, counted in ``initiations`` (2 means a double charge).
``verify_by_reference`` answers with the latest charge of that ``tx_ref``.

Magic numbers (``kunpay_worker.sandbox.scenarios``) pick the outcome from ``phone_number``:
500 (first request or always, or after registering), 429 with ``Retry-After: 1`` on a
``tx_ref``'s first request, held replies (released by ``POST /_sandbox/flutterwave/release``
or the sandbox-wide release), slow replies (registered, answered after ``slow_seconds``),
pending forever, late success. A charge reads ``pending`` until ``settle_seconds``, then
``successful`` or ``failed``, with these ``processor_response`` texts for the generic failures
(kunpay's Flutterwave client maps them back to the same names):

    PAYER_NOT_FOUND                "Subscriber not found"
    NOT_ENOUGH_FUNDS               "Insufficient funds"
    APPROVAL_REJECTED              "Transaction declined by customer"
    EXPIRED                        "Transaction timed out"
    PAYER_LIMIT_REACHED            "Transaction limit exceeded"
    NOT_ALLOWED                    "Transaction not permitted"
    INTERNAL_PROCESSING_ERROR      "Internal processing error"
    COULD_NOT_PERFORM_TRANSACTION  "Unable to process transaction"
    SERVICE_UNAVAILABLE            "Mobile money service unavailable"

Flutterwave documents no failure codes for francophone mobile money; these texts are the
sandbox's own, in Flutterwave's style.

Refunds: only of a ``successful`` charge, partial allowed, never above what is left (refunds not
failed count against it); without ``amount`` the rest is refunded. A refund reads ``pending``,
then ``completed``, or ``failed`` for charges from a REFUND_FAILS number. A refund request
carries no reference of ours, so refunds are counted per UUID found in ``comments`` (kunpay puts
its refund reference there), else per ``comments``, else per refund ``flw_ref``.

Webhooks: when ``flutterwave_webhook_url`` is set, each settled charge is POSTed there as
``{"event": "charge.completed", "data": <verify data>}`` with both ``verif-hash`` (the secret
hash) and ``flutterwave-signature`` (base64 HMAC-SHA256 of the raw body keyed by the secret
hash); a late success is announced again when it turns successful. Refunds send none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from kunpay_worker.sandbox.common import Kind, Outcome, SandboxConfig, SimPayment, Simulator
from kunpay_worker.sandbox.scenarios import Behaviour, Scenario, scenario_for

__all__ = ["FAILURE_TEXTS", "FlutterwaveSandbox"]

log = structlog.get_logger("kunpay.sandbox")

FAILURE_TEXTS: dict[str, str] = {
    "PAYER_NOT_FOUND": "Subscriber not found",
    "PAYEE_NOT_FOUND": "Subscriber not found",
    "NOT_ENOUGH_FUNDS": "Insufficient funds",
    "APPROVAL_REJECTED": "Transaction declined by customer",
    "EXPIRED": "Transaction timed out",
    "PAYER_LIMIT_REACHED": "Transaction limit exceeded",
    "NOT_ALLOWED": "Transaction not permitted",
    "INTERNAL_PROCESSING_ERROR": "Internal processing error",
    "COULD_NOT_PERFORM_TRANSACTION": "Unable to process transaction",
    "SERVICE_UNAVAILABLE": "Mobile money service unavailable",
}
_PENDING_TEXT = "Transaction in progress"
_SUCCESS_TEXT = "Approved Or Completed Successfully"
_CHARGE_TYPE = "mobile_money_franco"
# Francophone mobile money: the country's currency, and the networks Flutterwave names there.
_COUNTRIES: dict[str, tuple[str, frozenset[str]]] = {
    "CM": ("XAF", frozenset({"MTN", "ORANGE"})),
    "SN": ("XOF", frozenset({"ORANGEMONEY", "WAVE", "FREEMONEY", "EMONEY"})),
    "CI": ("XOF", frozenset({"ORANGE", "MTN", "MOOV", "WAVE"})),
    "BF": ("XOF", frozenset({"ORANGE", "MOOV"})),
}
_SECRET_KEY = re.compile(r"^FLWSECK(_TEST)?-\S+$")
_MSISDN = re.compile(r"^\d{8,15}$")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_ACCOUNT_ID = 20937
_REFUND_STATUS = {Outcome.PENDING: "pending", Outcome.SUCCESSFUL: "completed"}


def _answer(status: int, message: str, data: Any = None, **extra: Any) -> web.Response:
    body = {"status": "success" if status == 200 else "error", "message": message, "data": data}
    return web.json_response({**body, **extra}, status=status)


def _number(amount: str) -> int | float:
    """Flutterwave answers amounts as JSON numbers; the sandbox does the same (this is the
    simulated provider's wire format, not money kunpay computes with)."""
    value = Decimal(amount)
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _amount(value: object) -> Decimal | None:
    """A positive amount, given as a JSON number or a decimal string (Flutterwave takes both)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount > 0 else None


def _canonical(amount: Decimal) -> str:
    return f"{amount.normalize():f}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FlutterwaveSandbox(Simulator):
    name = "FLUTTERWAVE"

    def __init__(self, config: SandboxConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        # By Flutterwave id. ``payments`` (the base's) keeps the latest charge per tx_ref.
        self.charges: dict[str, SimPayment] = {}
        self.refunds: dict[str, SimPayment] = {}
        self.webhooks_sent = 0
        self._ids = itertools.count(4_193_430)
        self._timers: list[asyncio.TimerHandle] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v3/charges", self.charge),
            web.get("/v3/transactions/verify_by_reference", self.verify_by_reference),
            web.get("/v3/transactions/{id}/verify", self.verify),
            web.post("/v3/transactions/{id}/refund", self.refund),
            web.get("/v3/refunds/{id}", self.refund_status),
            *self.control_routes("/_sandbox/flutterwave"),
        ]

    # -- auth --------------------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return _answer(401, "Authorization required")
        if not auth.startswith("Bearer ") or not _SECRET_KEY.match(auth.removeprefix("Bearer ")):
            return _answer(401, "Invalid authorization key")
        return None

    # -- charges -----------------------------------------------------------------------------

    async def charge(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if request.query.get("type") != _CHARGE_TYPE:
            return _answer(400, "Invalid charge type")
        body = await _json_object(request)
        if body is None:
            return _answer(400, "The body must be a JSON object")
        tx_ref = body.get("tx_ref")
        if not isinstance(tx_ref, str) or not tx_ref.strip():
            return _answer(400, "tx_ref is required")
        self.requests[tx_ref] += 1
        problem, amount = _check_charge(body)
        if problem is not None or amount is None:
            return _answer(400, problem or "Invalid amount")
        phone = body["phone_number"]
        scenario = scenario_for(phone)
        refused = self._refuse_first(tx_ref, scenario)
        if refused is not None:
            return refused
        # No de-duplication: the same tx_ref again is another charge.
        payment = self.register(
            tx_ref,
            kind=Kind.COLLECTION,
            amount=_canonical(amount),
            currency=body["currency"],
            msisdn=phone,
            scenario=scenario,
        )
        payment.provider_id = str(next(self._ids))
        payment.extra.update(
            flw_ref=f"FLW-SANDBOX-{payment.provider_id}",
            email=body["email"],
            network=body.get("network"),
            created_at=_now(),
            refunds=[],
        )
        self.charges[payment.provider_id] = payment
        self._schedule_webhooks(payment)
        status = await self.delay_answer(scenario)
        if status is not None:
            return _answer(status, "An error occurred. Please contact support")
        return _answer(
            200,
            "Charge initiated",
            self._transaction(payment),
            meta={"authorization": {"mode": "callback", "redirect_url": None}},
        )

    async def verify(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        payment = self.charges.get(request.match_info["id"])
        if payment is None:
            return _answer(400, "No transaction was found for this id")
        self.lookups[payment.reference] += 1
        return _answer(200, "Transaction fetched successfully", self._transaction(payment))

    async def verify_by_reference(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        tx_ref = request.query.get("tx_ref", "")
        if not tx_ref:
            return _answer(400, "tx_ref is required")
        self.lookups[tx_ref] += 1
        payment = self.payments.get(tx_ref)
        if payment is None or payment.kind is not Kind.COLLECTION:
            return _answer(400, "No transaction was found for this id")
        return _answer(200, "Transaction fetched successfully", self._transaction(payment))

    def _transaction(self, payment: SimPayment) -> dict[str, Any]:
        outcome, failure = self.outcome(payment)
        if outcome is Outcome.PENDING:
            status, text = "pending", _PENDING_TEXT
        elif outcome is Outcome.SUCCESSFUL:
            status, text = "successful", _SUCCESS_TEXT
        else:
            status, text = "failed", FAILURE_TEXTS.get(failure or "", "Transaction failed")
        amount = _number(payment.amount)
        return {
            "id": int(payment.provider_id),
            "tx_ref": payment.reference,
            "flw_ref": payment.extra["flw_ref"],
            "device_fingerprint": "N/A",
            "amount": amount,
            "currency": payment.currency,
            "charged_amount": amount,
            "app_fee": 0,
            "merchant_fee": 0,
            "processor_response": text,
            "auth_model": "AUTH",
            "narration": "kunpay sandbox",
            "status": status,
            # What Flutterwave's own francophone sample answers, Cameroon included.
            "payment_type": "mobilemoneysn",
            "fraud_status": "ok",
            "charge_type": "normal",
            "created_at": payment.extra["created_at"],
            "account_id": _ACCOUNT_ID,
            "customer": {
                "phone_number": payment.msisdn,
                "name": "kunpay sandbox",
                "email": payment.extra["email"],
            },
        }

    # -- refunds -----------------------------------------------------------------------------

    async def refund(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        original = self.charges.get(request.match_info["id"])
        if original is None:
            return _answer(400, "No transaction was found for this id")
        body = await _json_object(request, empty_ok=True)
        if body is None:
            return _answer(400, "The body must be a JSON object")
        comments = body.get("comments")
        refund_id = str(next(self._ids))
        flw_ref = f"URF_{int(datetime.now(UTC).timestamp() * 1000)}_{refund_id}"
        key = _refund_key(comments) or flw_ref
        self.requests[key] += 1
        if self.outcome(original)[0] is not Outcome.SUCCESSFUL:
            return _answer(400, "Only successful transactions can be refunded")
        left = Decimal(original.amount) - sum(
            (
                Decimal(self.refunds[r].amount)
                for r in original.extra["refunds"]
                if self.outcome(self.refunds[r])[0] is not Outcome.FAILED
            ),
            Decimal(0),
        )
        if left <= 0:
            return _answer(400, "Transaction has been fully refunded")
        amount = _amount(body["amount"]) if "amount" in body else left
        if amount is None or (amount != amount.to_integral_value()):
            return _answer(400, "Invalid amount")
        if amount > left:
            return _answer(400, f"Refund amount cannot exceed {_canonical(left)}, what is left")
        # A refund behaves as its charge's number says (REFUND_FAILS among others).
        scenario = original.scenario
        refused = self._refuse_first(key, scenario)
        if refused is not None:
            return refused
        payment = self.register(
            key,
            kind=Kind.REFUND,
            amount=_canonical(amount),
            currency=original.currency,
            msisdn=original.msisdn,
            scenario=scenario,
            original=original.reference,
        )
        payment.provider_id = refund_id
        payment.extra.update(
            flw_ref=flw_ref, tx_id=original.provider_id, comments=comments, created_at=_now()
        )
        self.refunds[refund_id] = payment
        original.extra["refunds"].append(refund_id)
        status = await self.delay_answer(scenario)
        if status is not None:
            return _answer(status, "An error occurred. Please contact support")
        return _answer(200, "Transaction refund initiated", self._refund(payment))

    async def refund_status(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        payment = self.refunds.get(request.match_info["id"])
        if payment is None:
            return _answer(404, "No refund was found for this id")
        self.lookups[payment.reference] += 1
        return _answer(200, "Refund fetched", self._refund(payment))

    def _refund(self, payment: SimPayment) -> dict[str, Any]:
        outcome, _failure = self.outcome(payment)
        return {
            "id": int(payment.provider_id),
            "account_id": _ACCOUNT_ID,
            "tx_id": int(payment.extra["tx_id"]),
            "flw_ref": payment.extra["flw_ref"],
            "wallet_id": 74639,
            "amount_refunded": _number(payment.amount),
            "status": _REFUND_STATUS.get(outcome, "failed"),
            "destination": "payment_source",
            "comments": payment.extra["comments"],
            "meta": {"source": "availablebalance"},
            "created_at": payment.extra["created_at"],
        }

    # -- scenarios before registering ---------------------------------------------------------

    def _refuse_first(self, reference: str, scenario: Scenario) -> web.Response | None:
        status = self.error_before_register(reference, scenario)
        if status == 429:
            return web.json_response(
                {"status": "error", "message": "Too many requests", "data": None},
                status=429,
                headers={"Retry-After": "1"},
            )
        if status is not None:
            return _answer(status, "An error occurred. Please contact support")
        return None

    # -- webhooks ----------------------------------------------------------------------------

    def _schedule_webhooks(self, payment: SimPayment) -> None:
        if not self.config.flutterwave_webhook_url:
            return
        if payment.scenario.behaviour is Behaviour.PENDING:
            return
        loop = asyncio.get_running_loop()
        delays = [self.config.settle_seconds]
        if payment.late:
            delays.append(self.config.late_seconds)
        for delay in delays:
            self._timers.append(loop.call_later(delay, self._spawn_webhook, payment))

    def _spawn_webhook(self, payment: SimPayment) -> None:
        task = asyncio.create_task(self._webhook(payment))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def webhook(self, payment: SimPayment) -> tuple[bytes, dict[str, str]]:
        """The raw body and headers Flutterwave would POST for ``payment`` now."""
        raw = json.dumps({"event": "charge.completed", "data": self._transaction(payment)}).encode()
        secret = self.config.flutterwave_secret_hash
        signature = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest())
        return raw, {
            "Content-Type": "application/json",
            "verif-hash": secret,
            "flutterwave-signature": signature.decode(),
        }

    async def _webhook(self, payment: SimPayment) -> None:
        url = self.config.flutterwave_webhook_url
        if url is None or self.outcome(payment)[0] is Outcome.PENDING:
            return  # Flutterwave calls back once a charge completes
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10, connect=5)
            )
        raw, headers = self.webhook(payment)
        try:
            async with self._session.post(url, data=raw, headers=headers) as resp:
                self.webhooks_sent += 1
                log.info(
                    "webhook sent",
                    provider=self.name,
                    reference=payment.reference,
                    status=resp.status,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info(
                "webhook failed", provider=self.name, reference=payment.reference, error=repr(exc)
            )

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await super().close()


def _refund_key(comments: object) -> str | None:
    """What refund requests are counted by: the UUID in the comments (kunpay's refund
    reference), else the comments themselves."""
    if not isinstance(comments, str) or not comments.strip():
        return None
    found = _UUID.search(comments)
    return found.group() if found else comments.strip()


async def _json_object(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any] | None:
    raw = await request.read()
    if not raw.strip() and empty_ok:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _check_charge(body: dict[str, Any]) -> tuple[str | None, Decimal | None]:
    """What Flutterwave would refuse in a francophone charge, and the amount when it is fine."""
    email = body.get("email")
    if not email:
        return "email is required", None
    if not isinstance(email, str) or "@" not in email:
        return "Invalid email address", None
    phone = body.get("phone_number")
    if not isinstance(phone, str) or not _MSISDN.match(phone):
        return "Invalid phone number", None
    country = body.get("country")
    if country not in _COUNTRIES:
        return f"Invalid country {country!r}", None
    currency, networks = _COUNTRIES[country]
    if body.get("currency") != currency:
        return f"Invalid currency: {country} charges are in {currency}", None
    network = body.get("network")
    if network is not None and network not in networks:
        return f"Invalid network {network!r}", None
    amount = _amount(body.get("amount"))
    if amount is None or amount != amount.to_integral_value():
        return "Invalid amount", None
    return None, amount
