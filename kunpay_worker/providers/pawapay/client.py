"""PawaPay (v2) client: deposits (collections), payouts, refunds (partial too), status checks and
provider prediction, one static API token, optionally signed requests (RFC 9421).

PawaPay de-duplicates by id: a repeated ``depositId``/``payoutId``/``refundId`` is answered
``DUPLICATE_IGNORED`` and never processed twice, so a send whose outcome is unknown may be
repeated once a status check says ``NOT_FOUND`` (DESIGN.md §5).

Signing: when ``KUNPAY_PAWAPAY__SIGNING_KEY`` holds a PEM private key, every POST carries
``Content-Digest`` (sha-512 of the exact body bytes), ``Signature-Date``, ``Signature-Input`` and
``Signature`` under the label ``sig-pp``, covering ``"@method" "@authority" "@path"
"signature-date" "content-digest" "content-type"`` with ``created``, ``expires``, ``keyid`` and
``alg``. EC P-256 keys sign ``ecdsa-p256-sha256`` (P-384: ``ecdsa-p384-sha384``), RSA keys
``rsa-pss-sha512``. ECDSA signatures are DER-encoded, as PawaPay's own Java and Node examples
produce them (RFC 9421 itself specifies raw r||s).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydantic import BaseModel, ValidationError
from yarl import URL

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.providers.base import (
    AccountHolder,
    AttemptRecorder,
    BackendBase,
    Capability,
    Lookup,
    MoneyRequest,
    SendReceipt,
)
from kunpay_worker.providers.errors import (
    ProviderAuthFailed,
    ProviderError,
    ProviderRefused,
    ProviderResponseInvalid,
)
from kunpay_worker.providers.http import HttpResponse, ProviderHttp, error_for
from kunpay_worker.providers.pawapay.transformers import (
    InitiationRejected,
    InitiationResponse,
    PredictProviderRequest,
    PredictProviderResponse,
    StatusResponse,
    UnknownStatus,
    deposit_body,
    failure_code,
    initiation_result,
    lookup_from_status,
    payout_body,
    refund_body,
)
from kunpay_worker.settings import PawapaySettings, Settings

__all__ = [
    "DERIVED_COMPONENTS",
    "SIGNATURE_LABEL",
    "SIGNED_COMPONENTS",
    "PawapayClient",
    "RequestSigner",
    "public_key_pem",
    "signature_base",
]

NAME = "PAWAPAY"

# Per transaction type: (path to create and, with the id appended, to check; operation name).
_ENDPOINTS: dict[TransactionType, tuple[str, str]] = {
    TransactionType.COLLECTION: ("/v2/deposits", "deposit"),
    TransactionType.DISBURSEMENT: ("/v2/payouts", "payout"),
    TransactionType.REFUND: ("/v2/refunds", "refund"),
}
_PREDICT_PROVIDER = "/v2/predict-provider"
_PUBLIC_KEYS = "/v2/public-key/http"
_JSON = "application/json"


class PawapayClient(BackendBase):
    name: ClassVar[str] = NAME
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.COLLECT,
            Capability.DISBURSE,
            Capability.REFUND,
            Capability.PARTIAL_REFUND,
            Capability.ACCOUNT_CHECK,
        }
    )
    operators: ClassVar[frozenset[str]] = frozenset({"MTN", "ORANGE"})
    dedupes_by_reference: ClassVar[bool] = True
    needs_prepare: ClassVar[bool] = False

    def __init__(
        self,
        settings: PawapaySettings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._http = ProviderHttp(
            NAME, session, base_url=settings.base_url, timeout=timeout, recorder=recorder
        )
        self._signer: RequestSigner | None = None
        if settings.signing_key is not None:
            if not settings.signing_key_id:
                raise ValueError("a PawaPay signing key needs KUNPAY_PAWAPAY__SIGNING_KEY_ID")
            self._signer = RequestSigner.from_pem(
                settings.signing_key.get_secret_value(),
                settings.signing_key_id,
                clock=wall_clock,
            )
        self._operators_by_code = {code: op for op, code in settings.operator_codes.items()}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout,
        recorder: AttemptRecorder | None,
    ) -> Self:
        return cls(settings.pawapay, session, timeout=timeout, recorder=recorder)

    @classmethod
    def configuration_problems(cls, settings: Settings) -> list[str]:
        configured = settings.pawapay
        problems = []
        if configured.api_token is None or not configured.api_token.get_secret_value():
            problems.append("PAWAPAY api token missing: KUNPAY_PAWAPAY__API_TOKEN")
        missing_codes = sorted(cls.operators - configured.operator_codes.keys())
        if missing_codes:
            problems.append(
                f"PAWAPAY has no provider code for {', '.join(missing_codes)}: "
                "KUNPAY_PAWAPAY__OPERATOR_CODES"
            )
        if configured.signing_key is not None:
            if not configured.signing_key_id:
                problems.append(
                    "PAWAPAY signing key set without its key id: KUNPAY_PAWAPAY__SIGNING_KEY_ID"
                )
            try:
                _load_signing_key(configured.signing_key.get_secret_value())
            except ValueError as exc:
                problems.append(f"PAWAPAY signing key unusable: {exc}")
        elif configured.signing_key_id:
            problems.append(
                "PAWAPAY signing key id set without the key: KUNPAY_PAWAPAY__SIGNING_KEY"
            )
        return problems

    @classmethod
    def currencies(cls, settings: Settings) -> list[str]:
        return settings.pawapay.currencies

    # -- money operations --------------------------------------------------------------------

    async def send(self, request: MoneyRequest) -> SendReceipt:
        path, operation = _ENDPOINTS[request.kind]
        response = await self._call(
            "POST",
            path,
            operation=operation,
            transaction_id=request.transaction_id,
            body=self._body(request),
            sends_money=True,
        )
        if not 200 <= response.status < 300:
            raise self._error(response, request.reference, sends_money=True)
        try:
            answer = InitiationResponse.model_validate_json(response.body)
            result = initiation_result(answer, kind=request.kind, reference=request.reference)
        except InitiationRejected as exc:
            raise ProviderRefused(
                f"PawaPay rejected the {operation} ({exc})",
                provider=NAME,
                http_status=response.status,
                provider_code=exc.code,
                reference=request.reference,
            ) from exc
        except (ValidationError, UnknownStatus) as exc:
            # It may have been taken: the engine looks the id up before anything else.
            raise ProviderResponseInvalid(
                f"unreadable PawaPay {operation} answer: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            ) from exc
        return SendReceipt(result)

    async def lookup(self, request: MoneyRequest) -> Lookup:
        path, operation = _ENDPOINTS[request.kind]
        response = await self._call(
            "GET",
            f"{path}/{request.reference}",
            operation=f"{operation}_status",
            transaction_id=request.transaction_id,
        )
        if response.status == 404:
            return Lookup(found=False)
        if response.status != 200:
            raise self._error(response, request.reference, sends_money=False)
        try:
            return lookup_from_status(
                StatusResponse.model_validate_json(response.body),
                kind=request.kind,
                reference=request.reference,
            )
        except (ValidationError, UnknownStatus) as exc:
            raise ProviderResponseInvalid(
                f"unreadable PawaPay {operation} status: {exc}",
                provider=NAME,
                http_status=response.status,
                reference=request.reference,
            ) from exc

    async def account_holder(self, msisdn: str, operator: str) -> AccountHolder:
        """PawaPay predicts the number's provider; it cannot say whether the wallet is active."""
        response = await self._call(
            "POST",
            _PREDICT_PROVIDER,
            operation="predict_provider",
            transaction_id=None,
            body=PredictProviderRequest(phoneNumber=msisdn).model_dump(),
        )
        if response.status != 200:
            if response.status in (400, 404, 422):
                # PawaPay's word on the number (INVALID_PHONE_NUMBER...), not a fault.
                code = failure_code(response.body)
                raise ProviderRefused(
                    f"PawaPay could not predict the provider ({code or response.status})",
                    provider=NAME,
                    http_status=response.status,
                    provider_code=code,
                )
            raise self._error(response, None, sends_money=False)
        try:
            predicted = PredictProviderResponse.model_validate_json(response.body)
        except ValidationError as exc:
            raise ProviderResponseInvalid(
                f"unreadable PawaPay provider prediction: {exc}", provider=NAME, http_status=200
            ) from exc
        return AccountHolder(active=None, operator=self._operators_by_code.get(predicted.provider))

    # -- callback signatures -----------------------------------------------------------------

    async def public_keys(self) -> dict[str, str]:
        """PawaPay's public keys for signed callbacks (GET /v2/public-key/http): key id → PEM
        (SubjectPublicKeyInfo). PawaPay documents ``[{"id": ..., "key": <PEM>}]``; a single
        object, ``{"keys": [...]}`` and base64 DER keys are accepted too, and entries that cannot
        be read are skipped. Raises a ProviderError subclass when PawaPay cannot be reached or
        its answer holds no usable key at all."""
        response = await self._call(
            "GET", _PUBLIC_KEYS, operation="public_keys", transaction_id=None
        )
        if response.status != 200:
            raise self._error(response, None, sends_money=False)
        keys = _public_keys_from(response.json())
        if keys is None:
            raise ProviderResponseInvalid(
                "unreadable PawaPay public keys answer", provider=NAME, http_status=200
            )
        return keys

    # -- bodies and HTTP ---------------------------------------------------------------------

    def _provider_code(self, request: MoneyRequest) -> str:
        code = self._settings.operator_codes.get(request.operator)
        if code is None:
            # Nothing was sent: a configuration gap, final for this payment.
            raise ProviderRefused(
                f"no PawaPay provider code for {request.operator} numbers "
                "(KUNPAY_PAWAPAY__OPERATOR_CODES)",
                provider=NAME,
                provider_code="UNSUPPORTED_OPERATOR",
                reference=request.reference,
            )
        return code

    def _body(self, request: MoneyRequest) -> dict[str, Any]:
        body: BaseModel
        if request.kind is TransactionType.COLLECTION:
            body = deposit_body(
                reference=request.reference,
                amount=request.amount,
                currency=request.currency,
                msisdn=request.msisdn,
                provider=self._provider_code(request),
                customer_message=self._settings.customer_message,
            )
        elif request.kind is TransactionType.DISBURSEMENT:
            body = payout_body(
                reference=request.reference,
                amount=request.amount,
                currency=request.currency,
                msisdn=request.msisdn,
                provider=self._provider_code(request),
                customer_message=self._settings.customer_message,
            )
        else:
            if request.original_reference is None:
                raise ValueError("a refund needs the original deposit's reference")
            body = refund_body(
                reference=request.reference,
                deposit_id=request.original_reference,
                amount=request.amount,
                currency=request.currency,
            )
        return body.model_dump(exclude_none=True)

    def _token(self) -> str:
        token = self._settings.api_token
        if token is None or not token.get_secret_value():
            raise ProviderAuthFailed(
                "PawaPay API token missing (KUNPAY_PAWAPAY__API_TOKEN)", provider=NAME
            )
        return token.get_secret_value()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        transaction_id: str | None,
        body: dict[str, Any] | None = None,
        sends_money: bool = False,
    ) -> HttpResponse:
        headers = {"Authorization": f"Bearer {self._token()}"}
        raw: bytes | None = None
        if body is not None:
            # Serialised here, once: a signature covers these exact bytes.
            raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = _JSON
            if self._signer is not None:
                headers.update(
                    self._signer.headers(
                        method, self._http.base_url + path, raw, content_type=_JSON
                    )
                )
        return await self._http.request(
            method,
            path,
            operation=operation,
            transaction_id=transaction_id,
            headers=headers,
            raw_body=raw,
            sends_money=sends_money,
        )

    def _error(
        self, response: HttpResponse, reference: str | None, *, sends_money: bool
    ) -> ProviderError:
        # 401/403: a static token (or, with HTTP_SIGNATURE_ERROR, our signature): nothing
        # was processed.
        return error_for(
            NAME,
            "PawaPay",
            response,
            reference=reference,
            code=failure_code(response.body),
            sends_money=sends_money,
        )


# -- request signing (RFC 9421) ----------------------------------------------------------------

SIGNATURE_LABEL = "sig-pp"
SIGNED_COMPONENTS = (
    "@method",
    "@authority",
    "@path",
    "signature-date",
    "content-digest",
    "content-type",
)
# How long a signature is valid (its ``expires`` parameter), in seconds.
SIGNATURE_LIFETIME = 60


class RequestSigner:
    """Signs PawaPay requests with our private key; PawaPay verifies with the public half."""

    def __init__(
        self,
        key_id: str,
        algorithm: str,
        sign: Callable[[bytes], bytes],
        *,
        clock: Callable[[], float] = time.time,
        lifetime: int = SIGNATURE_LIFETIME,
    ) -> None:
        self.key_id = key_id
        self.algorithm = algorithm
        self._sign = sign
        self._clock = clock
        self._lifetime = lifetime

    @classmethod
    def from_pem(
        cls, pem: str, key_id: str, *, clock: Callable[[], float] = time.time
    ) -> RequestSigner:
        algorithm, sign = _load_signing_key(pem)
        return cls(key_id, algorithm, sign, clock=clock)

    def headers(self, method: str, url: str, body: bytes, *, content_type: str) -> dict[str, str]:
        """The headers that sign this request: Content-Digest, Signature-Date,
        Signature-Input and Signature."""
        created = int(self._clock())
        fields = {
            "signature-date": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "content-digest": content_digest(body),
            "content-type": content_type,
        }
        params = signature_params(
            created=created,
            expires=created + self._lifetime,
            key_id=self.key_id,
            algorithm=self.algorithm,
        )
        base = signature_base(method, url, fields, params)
        signature = base64.b64encode(self._sign(base.encode())).decode()
        return {
            "Signature-Date": fields["signature-date"],
            "Content-Digest": fields["content-digest"],
            "Signature-Input": f"{SIGNATURE_LABEL}={params}",
            "Signature": f"{SIGNATURE_LABEL}=:{signature}:",
        }


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest of the body with SHA-512."""
    return f"sha-512=:{base64.b64encode(hashlib.sha512(body).digest()).decode()}:"


def _sf_string(value: str) -> str:
    if not value.isprintable() or not value.isascii():
        raise ValueError("signature parameters must be printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def signature_params(*, created: int, expires: int, key_id: str, algorithm: str) -> str:
    """The ``@signature-params`` value: covered components and metadata."""
    components = " ".join(_sf_string(name) for name in SIGNED_COMPONENTS)
    return (
        f"({components});created={created};expires={expires}"
        f";keyid={_sf_string(key_id)};alg={_sf_string(algorithm)}"
    )


# Derived components (RFC 9421 §2.2) that signature_base() can compute for a request.
DERIVED_COMPONENTS = frozenset(
    {"@method", "@authority", "@path", "@query", "@scheme", "@target-uri", "@request-target"}
)


def signature_base(
    method: str,
    url: str,
    fields: Mapping[str, str],
    params: str,
    *,
    components: Sequence[str] = SIGNED_COMPONENTS,
) -> str:
    """RFC 9421 §2.5 signature base of a request: one line per covered component (by default
    the ones PawaPay expects), then ``@signature-params``. ``fields`` holds the value of every
    covered header field by its lowercased name; ``params`` is the serialised
    ``@signature-params`` value."""
    parsed = URL(url)
    if parsed.host is None:
        raise ValueError(f"cannot sign a request to {url!r}: no host")
    authority = parsed.host.lower()
    if parsed.explicit_port is not None and not parsed.is_default_port():
        authority += f":{parsed.explicit_port}"
    path = parsed.raw_path or "/"
    query = parsed.raw_query_string
    target = path + (f"?{query}" if query else "")
    scheme = parsed.scheme.lower()
    derived = {
        "@method": method.upper(),
        "@authority": authority,
        "@path": path,
        "@query": f"?{query}",  # "?" alone when there is no query (§2.2.7)
        "@scheme": scheme,
        "@target-uri": f"{scheme}://{authority}{target}",
        "@request-target": target,
    }
    lines = []
    for name in components:
        if name.startswith("@"):
            if name not in derived:
                raise ValueError(f"derived component {name!r} is not supported")
            lines.append(f'"{name}": {derived[name]}')
        else:
            lines.append(f'"{name}": {fields[name].strip()}')
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines)


def _load_signing_key(pem: str) -> tuple[str, Callable[[bytes], bytes]]:
    """(RFC 9421 algorithm name, signing function) for a PEM private key."""
    # Environment variables often carry a PEM with its newlines escaped.
    text = pem.replace("\\n", "\n").strip()
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a readable, unencrypted PEM private key") from exc
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {
            "secp256r1": ("ecdsa-p256-sha256", hashes.SHA256()),
            "secp384r1": ("ecdsa-p384-sha384", hashes.SHA384()),
        }
        if key.curve.name not in curves:
            raise ValueError(f"EC curve {key.curve.name} is not one PawaPay accepts (P-256, P-384)")
        algorithm, digest = curves[key.curve.name]
        ec_key = key

        def sign_ec(data: bytes) -> bytes:
            signature: bytes = ec_key.sign(data, ec.ECDSA(digest))  # DER, like PawaPay's examples
            return signature

        return algorithm, sign_ec
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_key = key

        def sign_rsa(data: bytes) -> bytes:
            signature: bytes = rsa_key.sign(
                data,
                padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64),
                hashes.SHA512(),
            )
            return signature

        return "rsa-pss-sha512", sign_rsa
    raise ValueError(f"{type(key).__name__} keys are not supported (use EC P-256 or RSA)")


# -- PawaPay's public keys ---------------------------------------------------------------------

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def public_key_pem(text: str) -> str:
    """A public key as PEM SubjectPublicKeyInfo, from PEM (``PUBLIC KEY``, ``RSA PUBLIC KEY``
    or ``CERTIFICATE``, newlines possibly escaped or missing) or base64 DER. Raises ValueError
    when it is none of these (the message never repeats the key)."""
    text = text.replace("\\n", "\n").strip()
    block = _PEM_BLOCK.search(text)
    kind = block.group(1) if block else "PUBLIC KEY"
    encoded = "".join((block.group(2) if block else text).split())
    try:
        der = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a PEM or base64 DER public key") from exc
    try:
        if kind == "CERTIFICATE":
            key: Any = x509.load_der_x509_certificate(der).public_key()
        else:
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a readable public key") from exc
    pem: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def _public_keys_from(payload: Any) -> dict[str, str] | None:
    """Key id → PEM from the public-key answer; None when its shape is not one we know or
    it lists keys of which none is usable."""
    if isinstance(payload, dict):
        entries = payload.get("keys", [payload]) if "key" not in payload else [payload]
    else:
        entries = payload
    if not isinstance(entries, list):
        return None
    keys: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        key_id = next((entry[f] for f in ("id", "keyId", "kid") if f in entry), None)
        text = next((entry[f] for f in ("key", "publicKey") if f in entry), None)
        if not isinstance(key_id, str) or not key_id or not isinstance(text, str):
            continue
        try:
            keys[key_id] = public_key_pem(text)
        except ValueError:
            continue
    if entries and not keys:
        return None
    return keys
