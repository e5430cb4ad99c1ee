"""Orange Money Cameroon merchant payment ("mp") simulated: token, init, pay, payment status,
notifications.

Strict where Orange is known to be strict, or where our client must be:

- ``POST /token`` needs HTTP Basic (client id and secret) and the form
  ``grant_type=client_credentials``; ``/omcoreapis/1.0.2/mp/*`` need a live bearer token and the
  merchant's ``X-AUTH-TOKEN`` (401 otherwise; the value is checked when the sandbox is given one).
- ``mp/pay`` needs every field, the merchant ``pin`` (checked when given one), both numbers as
  nine national digits, a payer other than the merchant, a whole-number ``amount`` string, and a
  payToken that ``mp/init`` issued and no pay has used (422 otherwise; a payToken is spent by the
  first pay that registers or is refused, not by a 429 or a 500 before registering).
- No de-duplication: ``orderId`` is not checked for reuse, so a second init + pay for one order
  is a second charge. ``initiations`` counts charges per orderId (our reference): more than one
  is a double charge; ``requests`` counts every pay per orderId.
- ``mp/paymentstatus/{payToken}``: the payment; an issued but unpaid payToken is ``INITIATED``,
  then ``EXPIRED`` (every other field null) after ``pay_token_ttl`` seconds; an unknown one 404.
- When a payment settles, its status ``data`` is POSTed to the ``notifUrl`` (not when it is "").

The payer's number picks the outcome (``scenarios.py``). Generic failures answer as Orange would,
as far as its clients show:

======================  ====================================================  ==============
failure                 Orange answer                                         source
======================  ====================================================  ==============
PAYER_NOT_FOUND         pay refused: 417, status FAILED, inittxnstatus 00671  clients
NOT_ENOUGH_FUNDS        pay refused: 417, status FAILED, inittxnstatus 60019  clients
APPROVAL_REJECTED       accepted, then status CANCELLED                       clients
EXPIRED                 accepted, then status EXPIRED                         clients
PAYER_LIMIT_REACHED     accepted, then FAILED, confirmtxnstatus 60022         one client
NOT_ALLOWED             accepted, then FAILED, confirmtxnstatus 60033         one client
SERVICE_UNAVAILABLE     accepted, then FAILED, confirmtxnstatus 60026         one client
other failures          accepted, then FAILED without a code (reason FAILED)  no code known
======================  ====================================================  ==============

The 500, 429 (``Retry-After: 1``), hold and slow scenarios come from the base simulator.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kunpay_worker.sandbox.common import (
    Kind,
    Outcome,
    SandboxConfig,
    SimPayment,
    Simulator,
    json_error,
)
from kunpay_worker.sandbox.scenarios import Behaviour, Scenario, scenario_for

__all__ = ["FAILURE_ANSWERS", "OrangeMpSandbox"]

API = "/omcoreapis/1.0.2"
_NATIONAL = re.compile(r"^6\d{8}$")
_AMOUNT = re.compile(r"^[1-9]\d*$")
_PAY_FIELDS = (
    "subscriberMsisdn",
    "channelUserMsisdn",
    "amount",
    "description",
    "orderId",
    "pin",
    "payToken",
    "notifUrl",
)


@dataclass(frozen=True, slots=True)
class FailureAnswer:
    status: str  # Orange's status once failed
    code: str | None  # inittxnstatus (refused at pay) or confirmtxnstatus (failed later)
    message: str
    at_pay: bool = False  # refused synchronously by mp/pay (417), nothing registered


FAILURE_ANSWERS: dict[str, FailureAnswer] = {
    "PAYER_NOT_FOUND": FailureAnswer(
        "FAILED", "00671", "Le numero du payeur n'est pas un compte Orange Money", at_pay=True
    ),
    "NOT_ENOUGH_FUNDS": FailureAnswer(
        "FAILED", "60019", "Le solde du compte du payeur est insuffisant", at_pay=True
    ),
    "APPROVAL_REJECTED": FailureAnswer("CANCELLED", None, "Le payeur a annule le paiement"),
    "EXPIRED": FailureAnswer("EXPIRED", None, "Le payeur n'a pas confirme a temps"),
    "PAYER_LIMIT_REACHED": FailureAnswer("FAILED", "60022", "Plafond de transactions atteint"),
    "NOT_ALLOWED": FailureAnswer("FAILED", "60033", "Le compte du payeur est bloque"),
    "SERVICE_UNAVAILABLE": FailureAnswer(
        "FAILED", "60026", "Service Orange Money momentanement indisponible"
    ),
}
_GENERIC_FAILURE = FailureAnswer("FAILED", None, "Echec du paiement")

# The fields of Orange's payment ``data`` object.
_DATA_FIELDS = (
    "id",
    "createtime",
    "subscriberMsisdn",
    "amount",
    "payToken",
    "txnid",
    "txnmode",
    "inittxnmessage",
    "inittxnstatus",
    "confirmtxnstatus",
    "confirmtxnmessage",
    "status",
    "notifUrl",
    "description",
    "channelUserMsisdn",
    "orderId",
)


@dataclass
class _PayToken:
    issued: float
    payment: SimPayment | None = None


def _error(status: int, message: str) -> web.Response:
    return json_error(status, {"message": message})


class OrangeMpSandbox(Simulator):
    name = "ORANGE_MP"

    def __init__(
        self,
        config: SandboxConfig,
        *,
        x_auth_token: str | None = None,
        pin: str | None = None,
        pay_token_ttl: float = 420.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self.x_auth_token = x_auth_token
        self.pin = pin
        # Orange's payTokens last at least seven minutes, one client says.
        self.pay_token_ttl = pay_token_ttl
        self.token_ttl = 3600
        self.tokens: dict[str, float] = {}  # access token → expiry
        self.tokens_issued = 0
        self.pay_tokens: dict[str, _PayToken] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/token", self.token),
            web.post(f"{API}/mp/init", self.init),
            web.post(f"{API}/mp/pay", self.pay),
            web.get(f"{API}/mp/paymentstatus/{{pay_token}}", self.payment_status),
            web.post("/_sandbox/orange/revoke-tokens", self.revoke_endpoint),
            *self.control_routes("/_sandbox/orange"),
        ]

    def counts(self) -> dict[str, Any]:
        return {**super().counts(), "pay_tokens_issued": len(self.pay_tokens)}

    # -- auth --------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        try:
            decoded = base64.b64decode(auth.removeprefix("Basic "), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            decoded = ""
        client_id, _, secret = decoded.partition(":")
        if not auth.startswith("Basic ") or not client_id or not secret:
            return json_error(
                401,
                {"error": "invalid_client", "error_description": "Client Authentication failed."},
            )
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return json_error(
                400,
                {"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"},
            )
        token = secrets.token_hex(16)
        self.tokens[token] = self.clock() + self.token_ttl
        self.tokens_issued += 1
        return web.json_response(
            {
                "access_token": token,
                "scope": "am_application_scope default",
                "token_type": "Bearer",
                "expires_in": self.token_ttl,
            }
        )

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    async def revoke_endpoint(self, _request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.json_response({"revoked": True})

    def _check_auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        expiry = (
            self.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        )
        if expiry is None or expiry < self.clock():
            # The shape of the WSO2 gateway in front of Orange's API.
            return json_error(
                401,
                {
                    "fault": {
                        "code": 900901,
                        "message": "Invalid Credentials",
                        "description": "Access failure for API: /omcoreapis/1.0.2, version: "
                        "1.0.2. Make sure you have given the correct access token",
                    }
                },
            )
        given = request.headers.get("X-AUTH-TOKEN")
        if not given or (self.x_auth_token is not None and given != self.x_auth_token):
            return _error(401, "X-AUTH-TOKEN missing or invalid")
        return None

    # -- init, pay, status -------------------------------------------------------------------

    async def init(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        pay_token = "MP" + time.strftime("%y%m%d") + secrets.token_hex(11).upper()
        self.pay_tokens[pay_token] = _PayToken(issued=self.clock())
        return web.json_response(
            {"message": "Payment request successfully initiated", "data": {"payToken": pay_token}}
        )

    async def pay(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "The body is not JSON.")
        problem = self._validate(body)
        if problem is not None:
            return _error(400, problem)
        order_id: str = body["orderId"]
        self.requests[order_id] += 1
        issued = self.pay_tokens.get(body["payToken"])
        if issued is None:
            return _error(422, "Invalid payToken")
        if issued.payment is not None:
            return _error(422, "PayToken already used")
        if self.clock() - issued.issued > self.pay_token_ttl:
            return _error(422, "PayToken expired")
        scenario = scenario_for(body["subscriberMsisdn"])
        status = self.error_before_register(order_id, scenario)
        if status == 429:
            return web.json_response(
                {"message": "Rate limit exceeded"}, status=429, headers={"Retry-After": "1"}
            )
        if status is not None:
            return _error(status, "Internal server error")
        refusal = _refusal(scenario)
        if refusal is not None:
            issued.payment = self._refused(body, scenario, refusal)
            return web.json_response(
                {
                    "message": f"{refusal.code} :: {refusal.message}",
                    "data": self._data(issued.payment),
                },
                status=417,
            )
        payment = self.register(
            order_id,
            kind=Kind.COLLECTION,
            amount=body["amount"],
            currency="XAF",
            msisdn=body["subscriberMsisdn"],
            scenario=scenario,
            callback_url=body["notifUrl"] or None,
            callback=self._notification,
        )
        payment.extra.update(_extra(body))
        issued.payment = payment
        status = await self.delay_answer(scenario)
        if status is not None:
            return _error(status, "Internal server error")
        return web.json_response(
            {
                "message": "Merchant payment successfully initiated",
                "data": self._data(payment, settled=False),
            }
        )

    async def payment_status(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        pay_token = request.match_info["pay_token"]
        self.lookups[pay_token] += 1
        issued = self.pay_tokens.get(pay_token)
        if issued is None:
            return _error(404, "Transaction not found")
        if issued.payment is None:
            expired = self.clock() - issued.issued > self.pay_token_ttl
            data: dict[str, Any] = dict.fromkeys(_DATA_FIELDS)
            data.update(payToken=pay_token, status="EXPIRED" if expired else "INITIATED")
        else:
            data = self._data(issued.payment)
        return web.json_response({"message": "Transaction retrieved successfully", "data": data})

    # -- helpers -----------------------------------------------------------------------------

    def _validate(self, body: object) -> str | None:
        if not isinstance(body, dict):
            return "The body must be a JSON object."
        for field in _PAY_FIELDS:
            if not isinstance(body.get(field), str):
                return f"{field} is required (a string)."
        for field in ("subscriberMsisdn", "channelUserMsisdn"):
            if not _NATIONAL.match(body[field]):
                return f"{field} must be the nine-digit national number, without 237."
        if body["subscriberMsisdn"] == body["channelUserMsisdn"]:
            return "subscriberMsisdn must differ from channelUserMsisdn."
        if not _AMOUNT.match(body["amount"]):
            return 'amount must be a whole number of XAF as a string, such as "5000".'
        if not body["orderId"] or not body["payToken"]:
            return "orderId and payToken must not be empty."
        if not body["pin"] or (self.pin is not None and body["pin"] != self.pin):
            return "Invalid PIN."
        return None

    def _refused(
        self, body: dict[str, Any], scenario: Scenario, refusal: FailureAnswer
    ) -> SimPayment:
        """A pay refused at once: it charged nothing, so it is not an initiation."""
        payment = SimPayment(
            reference=body["orderId"],
            kind=Kind.COLLECTION,
            amount=body["amount"],
            currency="XAF",
            msisdn=body["subscriberMsisdn"],
            scenario=scenario,
            created=self.clock(),
        )
        payment.extra.update(_extra(body), refusal=refusal)
        return payment

    def _data(self, payment: SimPayment, *, settled: bool = True) -> dict[str, Any]:
        """The payment as Orange's ``data`` object (pay, status and notification); the pay
        answer (``settled=False``) is always PENDING, whatever the payer does next."""
        extra = payment.extra
        data: dict[str, Any] = {
            "id": int(payment.provider_id),
            "createtime": extra["createtime"],
            "subscriberMsisdn": payment.msisdn,
            "amount": int(payment.amount),
            "payToken": extra["payToken"],
            "txnid": None,
            "txnmode": payment.reference,
            "inittxnmessage": None,
            "inittxnstatus": "200",
            "confirmtxnstatus": None,
            "confirmtxnmessage": None,
            "status": "PENDING",
            "notifUrl": extra["notifUrl"],
            "description": extra["description"],
            "channelUserMsisdn": extra["channelUserMsisdn"],
            "orderId": payment.reference,
        }
        refusal: FailureAnswer | None = extra.get("refusal")
        if refusal is not None:
            data.update(
                status=refusal.status, inittxnstatus=refusal.code, inittxnmessage=refusal.message
            )
            return data
        data["inittxnmessage"] = (
            "Paiement initie. Le client doit confirmer le paiement en saisissant son code PIN."
        )
        data["txnid"] = (
            f"MP{extra['createday']}.{payment.provider_id[:4]}.{payment.provider_id[4:10]}"
        )
        outcome, failure = self.outcome(payment) if settled else (Outcome.PENDING, None)
        if outcome is Outcome.SUCCESSFUL:
            data.update(
                status="SUCCESSFULL",
                confirmtxnstatus="200",
                confirmtxnmessage=f"Paiement de {payment.amount} FCFA reussi.",
            )
        elif outcome is Outcome.FAILED:
            answer = FAILURE_ANSWERS.get(failure or "", _GENERIC_FAILURE)
            data.update(
                status=answer.status, confirmtxnstatus=answer.code, confirmtxnmessage=answer.message
            )
        return data

    def _notification(self, payment: SimPayment) -> tuple[str, Any]:
        return "POST", self._data(payment)


def _refusal(scenario: Scenario) -> FailureAnswer | None:
    answer = FAILURE_ANSWERS.get(scenario.failure or "")
    if answer is None or not answer.at_pay or scenario.behaviour is not Behaviour.FAIL:
        return None
    return answer


def _extra(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "createtime": str(int(time.time())),
        "createday": time.strftime("%y%m%d"),
        "payToken": body["payToken"],
        "notifUrl": body["notifUrl"],
        "description": body["description"],
        "channelUserMsisdn": body["channelUserMsisdn"],
    }
