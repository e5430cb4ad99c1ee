"""MTN MoMo simulated: tokens per product, request to pay, transfers, refunds, balance, account
holder, callbacks (PUT or POST).

Strict where MTN is strict: a missing subscription key or bad token is 401, an X-Reference-Id
that is not a version-4 UUID is 400, a reused one is 409 (MTN de-duplicates by reference), an
empty payerMessage/payeeNote is a 500 (as MTN has answered in production).
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from decimal import Decimal
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
from kunpay_worker.sandbox.scenarios import Behaviour, scenario_for

__all__ = ["MtnSandbox"]

_AMOUNT = re.compile(r"^\d+(\.\d{1,2})?$")
_MSISDN = re.compile(r"^\d{8,15}$")
_CURRENCY_EXPONENT = {"XAF": 0, "EUR": 2}
_PRODUCTS = ("collection", "disbursement")


def _error(status: int, code: str, message: str) -> web.Response:
    return json_error(status, {"code": code, "message": message})


class MtnSandbox(Simulator):
    name = "MTN_MOMO"

    def __init__(self, config: SandboxConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.token_ttl = 3600
        self.tokens: dict[str, tuple[str, float]] = {}  # token → (product, expiry)
        self.tokens_issued = 0
        self.paid_out = Decimal(0)

    def routes(self) -> list[web.RouteDef]:
        routes = [web.post(f"/{product}/token/", self.token) for product in _PRODUCTS]
        for kind, path in (
            (Kind.COLLECTION, "/collection/v1_0/requesttopay"),
            (Kind.PAYOUT, "/disbursement/v1_0/transfer"),
            (Kind.REFUND, "/disbursement/v1_0/refund"),
        ):
            routes += [
                web.post(path, self._create(kind)),
                web.get(path + "/{reference}", self._status(kind)),
            ]
        routes += [
            web.get("/disbursement/v1_0/account/balance", self.balance),
            web.get("/{product}/v1_0/accountholder/msisdn/{msisdn}/active", self.account_holder),
            web.post("/_sandbox/mtn/revoke-tokens", self.revoke_endpoint),
            *self.control_routes("/_sandbox/mtn"),
        ]
        return routes

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
        product = request.path.strip("/").split("/")[0]
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (product, self.clock() + self.token_ttl)
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "token_type": "access_token", "expires_in": self.token_ttl}
        )

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    async def revoke_endpoint(self, _request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.json_response({"revoked": True})

    def _check_auth(self, request: web.Request, product: str) -> web.Response | None:
        if not request.headers.get("Ocp-Apim-Subscription-Key"):
            return _error(
                401, "MISSING_SUBSCRIPTION_KEY", "Access denied due to missing subscription key."
            )
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        issued = self.tokens.get(token)
        if issued is None or issued[1] < self.clock() or issued[0] != product:
            return _error(401, "INVALID_TOKEN", "Access token is missing, invalid or expired.")
        if not request.headers.get("X-Target-Environment"):
            return _error(400, "MISSING_TARGET_ENVIRONMENT", "X-Target-Environment is required.")
        return None

    # -- money movements ---------------------------------------------------------------------

    def _create(self, kind: Kind) -> Any:
        product = "collection" if kind is Kind.COLLECTION else "disbursement"

        async def create(request: web.Request) -> web.Response:
            denied = self._check_auth(request, product)
            if denied is not None:
                return denied
            reference = request.headers.get("X-Reference-Id", "")
            if not _is_uuid4(reference):
                return _error(
                    400, "INVALID_REFERENCE_ID", "X-Reference-Id must be a UUID version 4."
                )
            self.requests[reference] += 1
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
            problem = _validate_body(body, kind)
            if problem is not None:
                return _error(400, "BAD_REQUEST", problem)
            if not body.get("payerMessage") or not body.get("payeeNote"):
                # What MTN has done in production with empty texts.
                return _error(500, "INTERNAL_PROCESSING_ERROR", "An internal error occurred.")
            original: SimPayment | None = None
            if kind is Kind.REFUND:
                original = self.payments.get(body["referenceIdToRefund"])
                if original is None or self.outcome(original)[0] is not Outcome.SUCCESSFUL:
                    return _error(400, "RESOURCE_NOT_FOUND", "No successful payment to refund.")
                msisdn = original.msisdn
            else:
                party = body["payer"] if kind is Kind.COLLECTION else body["payee"]
                msisdn = party["partyId"]
            scenario = scenario_for(msisdn)
            if kind is Kind.REFUND and original is not None:
                scenario = (
                    original.scenario if scenario.behaviour is Behaviour.REFUND_FAILS else scenario
                )
            status = self.error_before_register(reference, scenario)
            if status == 429:
                return web.json_response(
                    {"code": "TOO_MANY_REQUESTS", "message": "Rate limit exceeded."},
                    status=429,
                    headers={"Retry-After": "1"},
                )
            if status is not None:
                return _error(status, "INTERNAL_PROCESSING_ERROR", "An internal error occurred.")
            self.register(
                reference,
                kind=kind,
                amount=body["amount"],
                currency=body["currency"],
                msisdn=msisdn,
                scenario=scenario,
                callback_url=request.headers.get("X-Callback-Url"),
                original=body.get("referenceIdToRefund"),
                callback=self._callback_body,
            )
            if kind is not Kind.COLLECTION:
                self.paid_out += Decimal(body["amount"])
            status = await self.delay_answer(scenario)
            if status is not None:
                return _error(status, "INTERNAL_PROCESSING_ERROR", "An internal error occurred.")
            return web.Response(status=202)

        return create

    def _status_body(self, payment: SimPayment) -> dict[str, Any]:
        outcome, failure = self.outcome(payment)
        party = {"partyIdType": "MSISDN", "partyId": payment.msisdn}
        body: dict[str, Any] = {
            "amount": payment.amount,
            "currency": payment.currency,
            "externalId": payment.reference,
            ("payer" if payment.kind is Kind.COLLECTION else "payee"): party,
            "payerMessage": "kunpay sandbox",
            "payeeNote": "kunpay sandbox",
            "status": str(outcome),
        }
        if outcome is Outcome.FAILED:
            body["reason"] = failure
        elif outcome is Outcome.SUCCESSFUL:
            body["financialTransactionId"] = payment.provider_id
        return body

    def _callback_body(self, payment: SimPayment) -> tuple[str, Any]:
        return self.config.callback_method, {
            **self._status_body(payment),
            "referenceId": payment.reference,
        }

    def _status(self, kind: Kind) -> Any:
        product = "collection" if kind is Kind.COLLECTION else "disbursement"

        async def status(request: web.Request) -> web.Response:
            denied = self._check_auth(request, product)
            if denied is not None:
                return denied
            reference = request.match_info["reference"]
            self.lookups[reference] += 1
            payment = self.payments.get(reference)
            if payment is None or payment.kind is not kind:
                return _error(404, "RESOURCE_NOT_FOUND", "Requested resource was not found.")
            return web.json_response(self._status_body(payment))

        return status

    async def balance(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request, "disbursement")
        if denied is not None:
            return denied
        available = Decimal(self.config.balance) - self.paid_out
        return web.json_response({"availableBalance": f"{available:f}", "currency": "XAF"})

    async def account_holder(self, request: web.Request) -> web.Response:
        product = request.match_info["product"]
        if product not in _PRODUCTS:
            raise web.HTTPNotFound
        denied = self._check_auth(request, product)
        if denied is not None:
            return denied
        msisdn = request.match_info["msisdn"]
        if not _MSISDN.match(msisdn):
            return _error(400, "BAD_REQUEST", "Invalid MSISDN.")
        active = scenario_for(msisdn).behaviour is not Behaviour.INACTIVE
        return web.json_response({"result": active})


def _is_uuid4(reference: str) -> bool:
    try:
        parsed = uuid.UUID(reference)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == reference.lower()


def _validate_body(body: object, kind: Kind) -> str | None:
    if not isinstance(body, dict):
        return "The body must be a JSON object."
    amount, currency = body.get("amount"), body.get("currency")
    if not isinstance(amount, str) or not _AMOUNT.match(amount):
        return 'amount must be a decimal string such as "5000".'
    if currency not in _CURRENCY_EXPONENT:
        return f"currency {currency!r} is not supported."
    if _CURRENCY_EXPONENT[currency] == 0 and "." in amount:
        return f"{currency} amounts have no decimals."
    if not isinstance(body.get("externalId", ""), str):
        return "externalId must be a string."
    if kind is Kind.REFUND:
        if not isinstance(body.get("referenceIdToRefund"), str):
            return "referenceIdToRefund is required."
        return None
    key = "payer" if kind is Kind.COLLECTION else "payee"
    party = body.get(key)
    if not isinstance(party, dict) or party.get("partyIdType") != "MSISDN":
        return f"{key}.partyIdType must be MSISDN."
    if not isinstance(party.get("partyId"), str) or not _MSISDN.match(party["partyId"]):
        return f"{key}.partyId must be the number's digits with the country code."
    return None
