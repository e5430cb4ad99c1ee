"""PawaPay (v2) simulated: deposits, payouts, refunds, status checks, provider prediction and
callbacks (POSTed to ``SandboxConfig.pawapay_callback_url`` with the status ``data``).

Strict where PawaPay is strict:

- ``Authorization: Bearer <token>`` on every call: missing → 401 ``NO_AUTHENTICATION``; a token
  other than the one the sandbox was given (when given one) → 403 ``AUTHENTICATION_ERROR``.
- ``depositId``/``payoutId``/``refundId`` must be UUID version 4: otherwise 400
  ``INVALID_PARAMETER`` (body ``status: REJECTED``). Unknown fields → 400
  ``UNSUPPORTED_PARAMETER``; missing ones → 400 ``MISSING_PARAMETER``; an amount that does not
  match PawaPay's pattern (``"5"``, ``"5.55"``, ``"0.5"`` pass; ``"5."``, ``".5"``, ``"00.5"``,
  ``"5.50"`` do not) or a ``customerMessage`` outside 4–22 characters → 400
  ``INVALID_PARAMETER``. A ``Content-Digest`` that does not match the body → 403
  ``HTTP_SIGNATURE_ERROR`` (signatures themselves are not verified here).
- Business refusals are HTTP 200 with ``status: REJECTED``: a provider other than
  ``MTN_MOMO_CMR``/``ORANGE_CMR`` → ``INVALID_PROVIDER``; a currency other than XAF →
  ``INVALID_CURRENCY``; decimals in XAF (0 decimals) → ``INVALID_AMOUNT``; an amount outside
  the limits → ``AMOUNT_OUT_OF_BOUNDS``; a number that is not a Cameroon mobile of the named
  provider's operator → ``INVALID_PHONE_NUMBER``.
- A reused id → ``DUPLICATE_IGNORED`` and no second initiation (PawaPay de-duplicates by id).
- Refunds only of a COMPLETED deposit (otherwise 400 ``INVALID_PARAMETER``), never above what
  is left: nothing left → ``DEPOSIT_ALREADY_REFUNDED``, more than left → ``AMOUNT_TOO_LARGE``.
  Without an ``amount`` the rest is refunded.

Magic numbers (scenarios.py) pick the outcome from the payer's, recipient's or refunded
payer's number; 500, 429 (``Retry-After: 1``), hold and slow come from the shared Simulator.
Generic failures become PawaPay failure codes:

| generic failure (scenarios.py)  | PawaPay ``failureCode``  |
|---------------------------------|--------------------------|
| PAYER_NOT_FOUND                 | PAYER_NOT_FOUND          |
| PAYEE_NOT_FOUND (payouts)       | RECIPIENT_NOT_FOUND      |
| NOT_ENOUGH_FUNDS                | INSUFFICIENT_BALANCE     |
| APPROVAL_REJECTED               | PAYMENT_NOT_APPROVED     |
| EXPIRED                         | PAYMENT_NOT_APPROVED     |
| PAYER_LIMIT_REACHED             | WALLET_LIMIT_REACHED     |
| NOT_ALLOWED                     | UNSPECIFIED_FAILURE      |
| INTERNAL_PROCESSING_ERROR       | UNSPECIFIED_FAILURE      |
| COULD_NOT_PERFORM_TRANSACTION   | UNSPECIFIED_FAILURE      |
| SERVICE_UNAVAILABLE             | UNSPECIFIED_FAILURE      |
| anything else                   | UNSPECIFIED_FAILURE      |

Statuses: ``ACCEPTED`` until ``settle_seconds`` pass, then ``PROCESSING`` while pending,
``COMPLETED`` (with ``providerTransactionId``) or ``FAILED`` (with ``failureReason``).

Signed callbacks: with ``SandboxConfig.pawapay_sign_callbacks`` the simulator makes one EC P-256
key when it starts, lists its public half on ``GET /v2/public-key/http`` (``[{"id", "key"}]``,
bearer token required) and signs every callback as PawaPay does (RFC 9421): ``Content-Digest``
(sha-512), ``Signature-Date``, ``Signature-Input`` and ``Signature`` under the label ``sig-pp``,
covering ``"@method" "@authority" "@path" "signature-date" "content-digest" "content-type"`` with
``alg``, ``keyid``, ``created`` and ``expires`` (DER-encoded ECDSA, like PawaPay's examples).
Without it the key list is empty and callbacks are unsigned.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kunpay_sdk.errors import ValidationError
from kunpay_sdk.msisdn import parse_msisdn
from kunpay_worker.providers.pawapay.client import RequestSigner
from kunpay_worker.sandbox.common import Kind, Outcome, SandboxConfig, SimPayment, Simulator
from kunpay_worker.sandbox.scenarios import scenario_for

__all__ = ["CALLBACK_KEY_ID", "FAILURE_CODES", "PawapaySandbox"]

log = structlog.get_logger("kunpay.sandbox")

# The id the simulator's callback-signing key is listed under (PawaPay's look like
# "HTTP_EC_P256_KEY:1").
CALLBACK_KEY_ID = "SANDBOX_HTTP_EC_P256_KEY:1"
_JSON = "application/json"

# Generic failure (scenarios.py, after the base's payout renaming) → PawaPay failureCode.
FAILURE_CODES: dict[str, str] = {
    "PAYER_NOT_FOUND": "PAYER_NOT_FOUND",
    "PAYEE_NOT_FOUND": "RECIPIENT_NOT_FOUND",
    "NOT_ENOUGH_FUNDS": "INSUFFICIENT_BALANCE",
    "APPROVAL_REJECTED": "PAYMENT_NOT_APPROVED",
    "EXPIRED": "PAYMENT_NOT_APPROVED",
    "PAYER_LIMIT_REACHED": "WALLET_LIMIT_REACHED",
    "NOT_ALLOWED": "UNSPECIFIED_FAILURE",
    "INTERNAL_PROCESSING_ERROR": "UNSPECIFIED_FAILURE",
    "COULD_NOT_PERFORM_TRANSACTION": "UNSPECIFIED_FAILURE",
    "SERVICE_UNAVAILABLE": "UNSPECIFIED_FAILURE",
}
_DEFAULT_FAILURE = "UNSPECIFIED_FAILURE"

_PATHS = {Kind.COLLECTION: "/v2/deposits", Kind.PAYOUT: "/v2/payouts", Kind.REFUND: "/v2/refunds"}
_ID_FIELDS = {Kind.COLLECTION: "depositId", Kind.PAYOUT: "payoutId", Kind.REFUND: "refundId"}
_PARTIES = {Kind.COLLECTION: "payer", Kind.PAYOUT: "recipient"}
_FIELDS = {
    Kind.COLLECTION: frozenset(
        {
            "depositId",
            "amount",
            "currency",
            "payer",
            "clientReferenceId",
            "customerMessage",
            "metadata",
            "preAuthorisationCode",
        }
    ),
    Kind.PAYOUT: frozenset(
        {
            "payoutId",
            "amount",
            "currency",
            "recipient",
            "clientReferenceId",
            "customerMessage",
            "metadata",
        }
    ),
    Kind.REFUND: frozenset(
        {"refundId", "depositId", "amount", "currency", "clientReferenceId", "metadata"}
    ),
}
# Provider code → (operator, currency): the Cameroon providers PawaPay serves.
_PROVIDERS = {"MTN_MOMO_CMR": ("MTN", "XAF"), "ORANGE_CMR": ("ORANGE", "XAF")}
_PROVIDER_FOR_OPERATOR = {operator: code for code, (operator, _) in _PROVIDERS.items()}
_DECIMALS = {"XAF": 0}
_AMOUNT = re.compile(r"^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$")
_DIGITS = re.compile(r"^\d{8,15}$")


@dataclass(frozen=True, slots=True)
class _Refusal:
    http_status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class _Movement:
    """What a valid initiation asks for."""

    amount: str
    currency: str
    msisdn: str
    provider: str
    customer_message: str | None = None
    original: SimPayment | None = None


def _failure(status: int, code: str, message: str, **fields: str) -> web.Response:
    body: dict[str, Any] = dict(fields)
    if status in (200, 400):
        body["status"] = "REJECTED"
    body["failureReason"] = {"failureCode": code, "failureMessage": message}
    return web.json_response(body, status=status)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PawapaySandbox(Simulator):
    name = "PAWAPAY"

    def __init__(
        self,
        config: SandboxConfig,
        *,
        api_token: str | None = None,
        min_amount: Decimal = Decimal(1),
        max_amount: Decimal = Decimal(5_000_000),
        wall_clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        # None: any non-empty bearer token is accepted.
        self.api_token = api_token
        self.min_amount = min_amount
        self.max_amount = max_amount
        # Signed callbacks: one key per run, its public half served on /v2/public-key/http.
        self.callback_signer: RequestSigner | None = None
        self.callback_public_key: str | None = None
        if config.pawapay_sign_callbacks:
            key = ec.generate_private_key(ec.SECP256R1())
            private_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            self.callback_signer = RequestSigner.from_pem(
                private_pem, CALLBACK_KEY_ID, clock=wall_clock
            )
            self.callback_public_key = (
                key.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode()
            )

    def routes(self) -> list[web.RouteDef]:
        routes: list[web.RouteDef] = []
        for kind, path in _PATHS.items():
            routes += [
                web.post(path, self._create(kind)),
                web.get(path + "/{ident}", self._status(kind)),
            ]
        routes += [
            web.post("/v2/predict-provider", self.predict_provider),
            web.get("/v2/public-key/http", self.public_keys),
            *self.control_routes("/_sandbox/pawapay"),
        ]
        return routes

    # -- auth --------------------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not token:
            return _failure(401, "NO_AUTHENTICATION", "No API token found in the request.")
        if self.api_token is not None and not hmac.compare_digest(
            token.encode(), self.api_token.encode()
        ):
            return _failure(403, "AUTHENTICATION_ERROR", "The API token is not valid.")
        return None

    # -- money movements ---------------------------------------------------------------------

    def _create(self, kind: Kind) -> Any:
        id_field = _ID_FIELDS[kind]

        async def create(request: web.Request) -> web.Response:
            denied = self._check_auth(request)
            if denied is not None:
                return denied
            raw = await request.read()
            if not _digest_matches(request.headers.get("Content-Digest"), raw):
                return _failure(403, "HTTP_SIGNATURE_ERROR", "Content-Digest does not match.")
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return _failure(400, "INVALID_INPUT", "The body is not a JSON object.")
            ident = body.get(id_field)
            if ident is None:
                return _failure(400, "MISSING_PARAMETER", f"{id_field} is required.")
            if not isinstance(ident, str):
                return _failure(400, "INVALID_PARAMETER", f"{id_field} must be a string.")
            self.requests[ident] += 1
            if not _is_uuid4(ident):
                return _failure(
                    400,
                    "INVALID_PARAMETER",
                    f"{id_field} must be a UUID version 4.",
                    **{id_field: ident},
                )
            if ident in self.payments:
                # Idempotent per id: the first request stands and nothing is initiated again.
                return web.json_response(
                    {
                        id_field: ident,
                        "status": "DUPLICATE_IGNORED",
                        "created": self.payments[ident].extra.get("created_at", _now()),
                    }
                )
            checked = self._check(kind, body)
            if isinstance(checked, _Refusal):
                return _failure(
                    checked.http_status, checked.code, checked.message, **{id_field: ident}
                )
            scenario = scenario_for(checked.msisdn)
            status = self.error_before_register(ident, scenario)
            if status == 429:
                return web.json_response(
                    {
                        "failureReason": {
                            "failureCode": "TOO_MANY_REQUESTS",
                            "failureMessage": "Rate limit exceeded.",
                        }
                    },
                    status=429,
                    headers={"Retry-After": "1"},
                )
            if status is not None:
                return _failure(status, "UNKNOWN_ERROR", "An internal error occurred.")
            created_at = _now()
            payment = self.register(
                ident,
                kind=kind,
                amount=checked.amount,
                currency=checked.currency,
                msisdn=checked.msisdn,
                scenario=scenario,
                callback_url=self.config.pawapay_callback_url,
                original=checked.original.reference if checked.original else None,
                callback=self._callback_body,
            )
            payment.extra.update(
                provider=checked.provider,
                created_at=created_at,
                customer_message=checked.customer_message,
            )
            status = await self.delay_answer(scenario)
            if status is not None:
                return _failure(status, "UNKNOWN_ERROR", "An internal error occurred.")
            return web.json_response({id_field: ident, "status": "ACCEPTED", "created": created_at})

        return create

    def _check(self, kind: Kind, body: dict[str, Any]) -> _Movement | _Refusal:
        unsupported = sorted(set(body) - _FIELDS[kind])
        if unsupported:
            return _Refusal(400, "UNSUPPORTED_PARAMETER", f"Not supported: {unsupported}.")
        if kind is Kind.REFUND:
            return self._check_refund(body)
        party_field = _PARTIES[kind]
        for name in ("amount", "currency", party_field):
            if body.get(name) is None:
                return _Refusal(400, "MISSING_PARAMETER", f"{name} is required.")
        amount, currency = body["amount"], body["currency"]
        if not isinstance(amount, str) or not _AMOUNT.match(amount):
            return _Refusal(400, "INVALID_PARAMETER", f"amount {amount!r} has an invalid format.")
        if not isinstance(currency, str):
            return _Refusal(400, "INVALID_PARAMETER", "currency must be a string.")
        message = body.get("customerMessage")
        if message is not None and (not isinstance(message, str) or not 4 <= len(message) <= 22):
            return _Refusal(400, "INVALID_PARAMETER", "customerMessage must be 4-22 characters.")
        party = body[party_field]
        details = party.get("accountDetails") if isinstance(party, dict) else None
        if not isinstance(party, dict) or party.get("type") != "MMO":
            return _Refusal(400, "INVALID_PARAMETER", f"{party_field}.type must be MMO.")
        if not isinstance(details, dict):
            return _Refusal(400, "MISSING_PARAMETER", f"{party_field}.accountDetails is required.")
        msisdn, provider = details.get("phoneNumber"), details.get("provider")
        if not isinstance(msisdn, str) or not isinstance(provider, str):
            return _Refusal(
                400, "MISSING_PARAMETER", "accountDetails.phoneNumber and provider are required."
            )
        if provider not in _PROVIDERS:
            return _Refusal(200, "INVALID_PROVIDER", f"Provider {provider} is not available.")
        operator, provider_currency = _PROVIDERS[provider]
        if currency != provider_currency:
            return _Refusal(
                200, "INVALID_CURRENCY", f"{provider} takes {provider_currency}, not {currency}."
            )
        refused = self._check_amount(Decimal(amount), currency)
        if refused is not None:
            return refused
        if not _DIGITS.match(msisdn) or _operator_of(msisdn) != operator:
            return _Refusal(
                200, "INVALID_PHONE_NUMBER", f"The phone number is not valid for {provider}."
            )
        return _Movement(amount, currency, msisdn, provider, customer_message=message)

    def _check_amount(self, amount: Decimal, currency: str) -> _Refusal | None:
        decimals = -int(amount.as_tuple().exponent)
        if decimals > _DECIMALS.get(currency, 2):
            return _Refusal(
                200, "INVALID_AMOUNT", f"{currency} allows {_DECIMALS.get(currency, 2)} decimals."
            )
        if not self.min_amount <= amount <= self.max_amount:
            return _Refusal(
                200,
                "AMOUNT_OUT_OF_BOUNDS",
                f"The amount must be between {self.min_amount} and {self.max_amount}.",
            )
        return None

    def _check_refund(self, body: dict[str, Any]) -> _Movement | _Refusal:
        deposit_id = body.get("depositId")
        if deposit_id is None:
            return _Refusal(400, "MISSING_PARAMETER", "depositId is required.")
        original = self.payments.get(deposit_id) if isinstance(deposit_id, str) else None
        if (
            original is None
            or original.kind is not Kind.COLLECTION
            or self.outcome(original)[0] is not Outcome.SUCCESSFUL
        ):
            return _Refusal(
                400, "INVALID_PARAMETER", "depositId does not refer to a COMPLETED deposit."
            )
        left = Decimal(original.amount) - self.refunded(original.reference)
        if left <= 0:
            return _Refusal(200, "DEPOSIT_ALREADY_REFUNDED", "The deposit is fully refunded.")
        currency = body.get("currency", original.currency)
        if currency != original.currency:
            return _Refusal(
                200, "INVALID_CURRENCY", f"The deposit was in {original.currency}, not {currency}."
            )
        amount = body.get("amount")
        if amount is None:
            amount = f"{left:f}"
        elif not isinstance(amount, str) or not _AMOUNT.match(amount):
            return _Refusal(400, "INVALID_PARAMETER", f"amount {amount!r} has an invalid format.")
        refused = self._check_amount(Decimal(amount), original.currency)
        if refused is not None:
            return refused
        if Decimal(amount) > left:
            return _Refusal(
                200, "AMOUNT_TOO_LARGE", f"Only {left:f} {original.currency} is left to refund."
            )
        return _Movement(
            amount,
            original.currency,
            original.msisdn,
            str(original.extra.get("provider", "")),
            original=original,
        )

    def refunded(self, deposit_id: str) -> Decimal:
        """What refunds of a deposit took or hold (every refund not FAILED)."""
        return sum(
            (
                Decimal(p.amount)
                for p in self.payments.values()
                if p.kind is Kind.REFUND
                and p.original == deposit_id
                and self.outcome(p)[0] is not Outcome.FAILED
            ),
            Decimal(0),
        )

    # -- status ------------------------------------------------------------------------------

    def status_data(self, payment: SimPayment) -> dict[str, Any]:
        """The status ``data`` of a movement (also the body of its callback)."""
        outcome, failure = self.outcome(payment)
        if outcome is Outcome.SUCCESSFUL:
            status = "COMPLETED"
        elif outcome is Outcome.FAILED:
            status = "FAILED"
        elif self.clock() - payment.created < self.config.settle_seconds:
            status = "ACCEPTED"
        else:
            status = "PROCESSING"
        party = {
            "type": "MMO",
            "accountDetails": {
                "phoneNumber": payment.msisdn,
                "provider": payment.extra.get("provider"),
            },
        }
        data: dict[str, Any] = {
            _ID_FIELDS[payment.kind]: payment.reference,
            "status": status,
            "amount": payment.amount,
            "currency": payment.currency,
            "country": "CMR",
            "payer" if payment.kind is Kind.COLLECTION else "recipient": party,
            "created": payment.extra.get("created_at"),
        }
        if payment.kind is Kind.REFUND:
            data["depositId"] = payment.original
        if payment.extra.get("customer_message"):
            data["customerMessage"] = payment.extra["customer_message"]
        if outcome is Outcome.SUCCESSFUL:
            data["providerTransactionId"] = payment.provider_id
        elif outcome is Outcome.FAILED:
            code = FAILURE_CODES.get(failure or "", _DEFAULT_FAILURE)
            data["failureReason"] = {"failureCode": code, "failureMessage": f"Failed: {code}."}
        return data

    def _callback_body(self, payment: SimPayment) -> tuple[str, Any]:
        return "POST", self.status_data(payment)

    def _status(self, kind: Kind) -> Any:
        async def status(request: web.Request) -> web.Response:
            denied = self._check_auth(request)
            if denied is not None:
                return denied
            ident = request.match_info["ident"]
            if not _is_uuid(ident):
                return _failure(400, "INVALID_PARAMETER", f"{_ID_FIELDS[kind]} must be a UUID.")
            self.lookups[ident] += 1
            payment = self.payments.get(ident)
            if payment is None or payment.kind is not kind:
                return web.json_response({"status": "NOT_FOUND"})
            return web.json_response({"status": "FOUND", "data": self.status_data(payment)})

        return status

    # -- signed callbacks --------------------------------------------------------------------

    async def public_keys(self, request: web.Request) -> web.Response:
        """The keys callbacks are signed with: ``[{"id", "key" (PEM)}]``, empty when callbacks
        are not signed."""
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        keys = []
        if self.callback_public_key is not None:
            keys.append({"id": CALLBACK_KEY_ID, "key": self.callback_public_key})
        return web.json_response(keys)

    async def _callback(
        self,
        payment: SimPayment,
        callback: Callable[[SimPayment], tuple[str, Any]],
        delay: float = 0.0,
    ) -> None:
        if self.callback_signer is None:
            await super()._callback(payment, callback, delay)
            return
        assert payment.callback_url is not None  # noqa: S101 - checked by register()
        if delay:
            await asyncio.sleep(delay)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10, connect=5)
            )
        method, body = callback(payment)
        # Serialised once: the signature covers these exact bytes.
        raw = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": _JSON}
        headers.update(
            self.callback_signer.headers(method, payment.callback_url, raw, content_type=_JSON)
        )
        try:
            async with self._session.request(
                method, payment.callback_url, data=raw, headers=headers
            ) as resp:
                log.info(
                    "callback sent",
                    provider=self.name,
                    reference=payment.reference,
                    status=resp.status,
                    signed=True,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info(
                "callback failed", provider=self.name, reference=payment.reference, error=repr(exc)
            )

    # -- toolkit -----------------------------------------------------------------------------

    async def predict_provider(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _failure(400, "INVALID_INPUT", "The body is not a JSON object.")
        phone = body.get("phoneNumber")
        if not isinstance(phone, str):
            return _failure(400, "MISSING_PARAMETER", "phoneNumber is required.")
        # PawaPay sanitises: no '+', no whitespace, no other non-digits.
        digits = re.sub(r"\D", "", phone)
        provider = _PROVIDER_FOR_OPERATOR.get(_operator_of(digits) or "")
        if provider is None:
            return _failure(400, "INVALID_PHONE_NUMBER", "No provider serves this phone number.")
        return web.json_response({"country": "CMR", "provider": provider, "phoneNumber": digits})


def _operator_of(digits: str) -> str | None:
    """The operator of a Cameroon mobile number (country code, digits only), or None."""
    if not digits.startswith("237"):
        return None
    try:
        return str(parse_msisdn("+" + digits).operator)
    except ValidationError:
        return None


def _digest_matches(header: str | None, body: bytes) -> bool:
    """No header: nothing to check. Otherwise every sha-256/sha-512 entry must match."""
    if header is None:
        return True
    algorithms = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
    checked = False
    for entry in header.split(","):
        name, _, value = entry.strip().partition("=")
        if name not in algorithms:
            continue
        expected = base64.b64encode(algorithms[name](body).digest()).decode()
        if not hmac.compare_digest(value.strip().strip(":").encode(), expected.encode()):
            return False
        checked = True
    return checked


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_uuid4(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value.lower()
