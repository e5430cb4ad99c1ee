"""PawaPay signed callbacks: CallbackVerifier and PawapayClient.public_keys().

Callbacks are signed here by hand, independently of the client's signing code: the signature
base is written out line by line as RFC 9421 §2.5 and PawaPay's signature guide describe it
(PawaPay's callbacks cover "@method" "@authority" "@path" "signature-date" "content-digest"
"content-type" under the label sig-pp). The public-key answer follows PawaPay's v2 API reference
(GET /v2/public-key/http → [{"id": "HTTP_EC_P256_KEY:1", "key": "-----BEGIN PUBLIC KEY-----..."}]).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from multidict import CIMultiDict
from yarl import URL

from kunpay_worker.providers.base import AttemptRecord
from kunpay_worker.providers.errors import (
    ProviderAuthFailed,
    ProviderResponseInvalid,
    ProviderUnavailable,
)
from kunpay_worker.providers.pawapay.callbacks import (
    REFETCH_INTERVAL,
    CallbackRejected,
    CallbackVerifier,
)
from kunpay_worker.providers.pawapay.client import PawapayClient
from kunpay_worker.settings import PawapaySettings

BASE = "https://pawapay.test"
KEYS_URL = f"{BASE}/v2/public-key/http"
TOKEN = "pp-api-token-secret"
CALLBACK_URL = "https://merchant.example/payments/pawapay/webhook/"
KEY_ID = "HTTP_EC_P256_KEY:1"
NOW = 1_747_294_736  # 2025-05-15T07:38:56Z
BODY = json.dumps(
    {
        "depositId": "8917c345-4791-4285-a416-62f24b6982db",
        "status": "COMPLETED",
        "amount": "5000",
        "currency": "XAF",
        "country": "CMR",
        "payer": {
            "type": "MMO",
            "accountDetails": {"phoneNumber": "237670000000", "provider": "MTN_MOMO_CMR"},
        },
        "created": "2025-05-15T07:38:56Z",
        "providerTransactionId": "ABC123",
    }
).encode()
COMPONENTS = (
    "@method",
    "@authority",
    "@path",
    "signature-date",
    "content-digest",
    "content-type",
)

P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_P256 = ec.generate_private_key(ec.SECP256R1())


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def public_pem(key: Any) -> str:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def public_der_b64(key: Any) -> str:
    der: bytes = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def digest_header(body: bytes, algorithm: str = "sha-512") -> str:
    hashed = hashlib.sha512(body) if algorithm == "sha-512" else hashlib.sha256(body)
    return f"{algorithm}=:{base64.b64encode(hashed.digest()).decode()}:"


def raw_signature(der: bytes, size: int) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def sign_with(key: Any, alg: str, data: bytes, *, raw: bool = False) -> bytes:
    if alg == "ecdsa-p256-sha256":
        der: bytes = key.sign(data, ec.ECDSA(hashes.SHA256()))
        return raw_signature(der, 32) if raw else der
    if alg == "ecdsa-p384-sha384":
        der = key.sign(data, ec.ECDSA(hashes.SHA384()))
        return raw_signature(der, 48) if raw else der
    if alg == "rsa-pss-sha512":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
        signed: bytes = key.sign(data, pss, hashes.SHA512())
        return signed
    if alg == "rsa-v1_5-sha256":
        signed = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return signed
    # An algorithm the verifier does not support: any bytes will do.
    return b"\x01" * 64


def signed_headers(
    key: Any = P256,
    *,
    alg: str = "ecdsa-p256-sha256",
    key_id: str | None = KEY_ID,
    created: int = NOW,
    expires: int | None = None,
    body: bytes = BODY,
    url: str = CALLBACK_URL,
    components: tuple[str, ...] = COMPONENTS,
    digest: str | None = None,
    raw: bool = False,
    extra_params: str = "",
) -> dict[str, str]:
    """What PawaPay sends with a signed callback, built by hand."""
    expires = created + 60 if expires is None else expires
    parsed = URL(url)
    authority = parsed.host or ""
    if parsed.explicit_port is not None:
        authority += f":{parsed.explicit_port}"
    fields = {
        "signature-date": "2025-05-15T07:38:56.131905Z",
        "content-digest": digest if digest is not None else digest_header(body),
        "content-type": "application/json",
    }
    derived = {"@method": "POST", "@authority": authority, "@path": parsed.raw_path}
    names = " ".join(f'"{name}"' for name in components)
    keyid = f';keyid="{key_id}"' if key_id is not None else ""
    params = f'({names});alg="{alg}"{keyid};created={created};expires={expires}{extra_params}'
    lines = [f'"{name}": {derived.get(name) or fields[name]}' for name in components]
    lines.append(f'"@signature-params": {params}')
    signature = sign_with(key, alg, "\n".join(lines).encode(), raw=raw)
    return {
        "Content-Type": fields["content-type"],
        "Content-Digest": fields["content-digest"],
        "Signature-Date": fields["signature-date"],
        "Signature-Input": f"sig-pp={params}",
        "Signature": f"sig-pp=:{base64.b64encode(signature).decode()}:",
        "Accept-Signature": "rsa-pss-sha512,ecdsa-p256-sha256,rsa-v1_5-sha256,ecdsa-p384-sha384",
        "Accept-Digest": "sha-256,sha-512",
    }


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def records() -> list[AttemptRecord]:
    return []


@pytest.fixture
def client(session: aiohttp.ClientSession, records: list[AttemptRecord]) -> PawapayClient:
    async def record(attempt: AttemptRecord) -> None:
        records.append(attempt)

    return PawapayClient(
        PawapaySettings(base_url=BASE, api_token=TOKEN),  # type: ignore[arg-type]
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
        recorder=record,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(client: PawapayClient, clock: Clock) -> CallbackVerifier:
    return CallbackVerifier(client, clock=clock)


def serve_keys(mocked: aioresponses, keys: Any, *, repeat: bool = True) -> None:
    mocked.get(KEYS_URL, payload=keys, repeat=repeat)


def key_fetches(mocked: aioresponses) -> int:
    return len(mocked.requests.get(("GET", URL(KEYS_URL)), []))


async def verify(
    verifier: CallbackVerifier,
    headers: Any,
    *,
    body: bytes = BODY,
    url: str = CALLBACK_URL,
    method: str = "POST",
) -> None:
    await verifier.verify(method=method, url=url, headers=headers, body=body)


async def rejected(verifier: CallbackVerifier, headers: Any, **kwargs: Any) -> str:
    with pytest.raises(CallbackRejected) as caught:
        await verify(verifier, headers, **kwargs)
    assert "BEGIN" not in str(caught.value)  # never key material
    return caught.value.reason


# -- valid signatures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "raw"),
    [
        (P256, "ecdsa-p256-sha256", False),  # DER, as PawaPay's examples sign
        (P256, "ecdsa-p256-sha256", True),  # raw r||s, as RFC 9421 specifies
        (P384, "ecdsa-p384-sha384", False),
        (P384, "ecdsa-p384-sha384", True),
        (RSA, "rsa-pss-sha512", False),
        (RSA, "rsa-v1_5-sha256", False),
    ],
)
async def test_a_valid_signature_passes(
    verifier: CallbackVerifier, mocked: aioresponses, key: Any, alg: str, raw: bool
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(key)}])
    await verify(verifier, signed_headers(key, alg=alg, raw=raw))
    assert key_fetches(mocked) == 1


async def test_keys_are_fetched_once_and_cached(
    verifier: CallbackVerifier, mocked: aioresponses, clock: Clock
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    for step in range(5):
        clock.now = NOW + step * REFETCH_INTERVAL  # long after the refetch interval
        await verify(verifier, signed_headers(created=int(clock.now)))
    assert key_fetches(mocked) == 1
    call = mocked.requests[("GET", URL(KEYS_URL))][0]
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


async def test_a_sha256_digest_passes(verifier: CallbackVerifier, mocked: aioresponses) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    await verify(verifier, signed_headers(digest=digest_header(BODY, "sha-256")))


async def test_headers_are_case_insensitive_and_may_be_a_multidict(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    headers = CIMultiDict((name.upper(), value) for name, value in signed_headers().items())
    await verify(verifier, headers)


async def test_extra_parameters_and_other_labels_are_handled(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    """nonce/tag (PawaPay's Java library can add them) are part of @signature-params; another
    signature next to sig-pp is ignored."""
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    headers = signed_headers(extra_params=';nonce="abc";tag="pawaPay"')
    headers["Signature-Input"] = 'other=("@method");created=1, ' + headers["Signature-Input"]
    headers["Signature"] = "other=:AAAA:, " + headers["Signature"]
    await verify(verifier, headers)


async def test_a_non_canonical_signature_input_is_re_serialised(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    headers = signed_headers()
    value = headers["Signature-Input"].replace('("@method" ', '(  "@method"  ')
    headers["Signature-Input"] = value.replace(';keyid="', '; keyid="')
    await verify(verifier, headers)


async def test_an_explicit_port_is_part_of_the_authority(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    url = "https://merchant.example:8443/payments/pawapay/webhook/"
    await verify(verifier, signed_headers(url=url), url=url)
    assert await rejected(verifier, signed_headers(url=url), url=CALLBACK_URL) == (
        "signature does not verify"
    )


# -- the body and its digest -----------------------------------------------------------------


async def test_a_tampered_body_is_rejected(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    tampered = BODY.replace(b"COMPLETED", b"FAILED")
    assert await rejected(verifier, signed_headers(), body=tampered) == (
        "Content-Digest does not match the body"
    )
    assert key_fetches(mocked) == 0  # refused before any call to PawaPay


async def test_a_recomputed_digest_does_not_rescue_a_tampered_body(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    tampered = BODY.replace(b"COMPLETED", b"FAILED")
    headers = signed_headers()
    headers["Content-Digest"] = digest_header(tampered)
    assert await rejected(verifier, headers, body=tampered) == "signature does not verify"


@pytest.mark.parametrize(
    ("digest", "reason"),
    [
        (digest_header(b"another body"), "Content-Digest does not match the body"),
        (digest_header(b"x", "sha-256"), "Content-Digest does not match the body"),
        # Every digest we know must match, not just one of them.
        (
            f"{digest_header(BODY)}, {digest_header(b'x', 'sha-256')}",
            "Content-Digest does not match the body",
        ),
        ("md5=:AAAA:", "Content-Digest has no sha-256 or sha-512"),
        ("sha-512=not-bytes", "Content-Digest unparseable"),
        ("sha-512=:%%%:", "Content-Digest unparseable"),
        ("SHA-512=:AAAA:", "Content-Digest unparseable"),
    ],
)
async def test_a_wrong_digest_is_rejected(
    verifier: CallbackVerifier, mocked: aioresponses, digest: str, reason: str
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    assert await rejected(verifier, signed_headers(digest=digest)) == reason


# -- headers and covered components ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Content-Digest", "Content-Digest missing"),
        ("Signature", "Signature missing"),
        ("Signature-Input", "Signature-Input missing"),
        ("Signature-Date", "covered header signature-date missing"),
        ("Content-Type", "covered header content-type missing"),
    ],
)
async def test_missing_headers_are_rejected(
    verifier: CallbackVerifier, mocked: aioresponses, header: str, reason: str
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    headers = signed_headers()
    del headers[header]
    assert await rejected(verifier, headers) == reason
    assert key_fetches(mocked) == 0


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("Signature-Input", "sig-pp=", "Signature-Input unparseable"),
        ("Signature-Input", 'sig-pp=("@method" "@path"', "Signature-Input unparseable"),
        ("Signature-Input", "sig-pp=:AAAA:", "Signature-Input unparseable"),
        ("Signature-Input", "sig-pp=(@method)", "Signature-Input unparseable"),
        ("Signature-Input", 'Sig-pp=("@method")', "Signature-Input unparseable"),
        ("Signature-Input", 'sig-pp=("@method"),', "Signature-Input unparseable"),
        ("Signature", "sig-pp=:not base64!:", "Signature unparseable"),
        ("Signature", 'sig-pp="text"', "Signature unparseable"),
        ("Signature", "sig-pp=::", "Signature unparseable"),
        ("Signature", "other=:AAAA:", "no matching signature label"),
    ],
)
async def test_unparseable_signature_headers_are_rejected(
    verifier: CallbackVerifier, mocked: aioresponses, header: str, value: str, reason: str
) -> None:
    headers = signed_headers()
    headers[header] = value
    assert await rejected(verifier, headers) == reason
    assert key_fetches(mocked) == 0


NO_COVER = "signature does not cover"
REQUIRED = ("@method", "@authority", "@path", "content-digest")


@pytest.mark.parametrize(
    ("components", "reason"),
    [
        (
            ("@method", "@authority", "@path", "content-type"),
            "signature does not cover content-digest",
        ),
        (("@authority", "@path", "content-digest"), "signature does not cover @method"),
        (("@method", "@path", "content-digest"), f"{NO_COVER} @authority and @path"),
        (("@method", "@authority", "content-digest"), f"{NO_COVER} @authority and @path"),
        ((*REQUIRED, "@status"), "component @status not supported"),
        ((*REQUIRED, "@method"), "Signature-Input unparseable"),
        ((*REQUIRED, "x-missing"), "covered header x-missing missing"),
    ],
)  # fmt: skip
async def test_too_few_or_unknown_components_are_rejected(
    verifier: CallbackVerifier,
    mocked: aioresponses,
    components: tuple[str, ...],
    reason: str,
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    headers = signed_headers()
    names = " ".join(f'"{c}"' for c in components)
    headers["Signature-Input"] = f"sig-pp=({names})" + headers["Signature-Input"].split(")", 1)[1]
    assert await rejected(verifier, headers) == reason


async def test_component_parameters_are_rejected(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    headers = signed_headers()
    headers["Signature-Input"] = headers["Signature-Input"].replace(
        '"content-type"', '"content-type";sf'
    )
    assert await rejected(verifier, headers) == "component parameters are not supported"


async def test_the_method_is_signed(verifier: CallbackVerifier, mocked: aioresponses) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    assert await rejected(verifier, signed_headers(), method="PUT") == "signature does not verify"


async def test_the_path_is_signed(verifier: CallbackVerifier, mocked: aioresponses) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    other = "https://merchant.example/payments/other/webhook/"
    assert await rejected(verifier, signed_headers(), url=other) == "signature does not verify"


# -- time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "expires", "reason"),
    [
        (NOW - 120, NOW - 60, "signature expired"),
        (NOW - 61, NOW - 1, "signature expired"),
        (NOW - 301, NOW + 3600, "signature too old"),
        (NOW + 3600, NOW + 3660, "signature created in the future"),
        (NOW, NOW - 1, "signature expires before it was created"),
    ],
)
async def test_stale_or_future_signatures_are_rejected(
    verifier: CallbackVerifier, mocked: aioresponses, created: int, expires: int, reason: str
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    headers = signed_headers(created=created, expires=expires)
    assert await rejected(verifier, headers) == reason
    assert key_fetches(mocked) == 0


async def test_max_age_is_configurable(client: PawapayClient, mocked: aioresponses) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    strict = CallbackVerifier(client, clock=Clock(NOW + 11), max_age=10)
    assert await rejected(strict, signed_headers()) == "signature too old"
    await CallbackVerifier(client, clock=Clock(NOW + 10), max_age=10).verify(
        method="POST", url=CALLBACK_URL, headers=signed_headers(), body=BODY
    )


NO_TIMES = "signature created/expires missing"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ('alg="ecdsa-p256-sha256";keyid="K";expires=1', NO_TIMES),
        ('alg="ecdsa-p256-sha256";keyid="K";created=1', NO_TIMES),
        ('alg="ecdsa-p256-sha256";keyid="K";created="1";expires=2', NO_TIMES),
        ('alg="ecdsa-p256-sha256";keyid="K";created=?1;expires=2', NO_TIMES),
        (f'keyid="K";created={NOW};expires={NOW + 60}', "signature alg missing"),
        (f'alg=ecdsa;keyid="K";created={NOW};expires={NOW + 60}', "signature alg missing"),
        (f'alg="ecdsa-p256-sha256";created={NOW};expires={NOW + 60}', "signature keyid missing"),
    ],
)  # fmt: skip
async def test_missing_signature_parameters_are_rejected(
    verifier: CallbackVerifier, params: str, reason: str
) -> None:
    headers = signed_headers()
    components = headers["Signature-Input"].split(";", 1)[0]
    headers["Signature-Input"] = f"{components};{params}"
    assert await rejected(verifier, headers) == reason


# -- algorithms and keys ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519", "ecdsa-p521-sha512", "rsa-pss-sha256"])
async def test_an_unsupported_alg_is_rejected_without_fetching_keys(
    verifier: CallbackVerifier, mocked: aioresponses, alg: str
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    assert await rejected(verifier, signed_headers(alg=alg)) == "unsupported signature alg"
    assert key_fetches(mocked) == 0


@pytest.mark.parametrize(
    ("key", "alg"),
    [(RSA, "ecdsa-p256-sha256"), (P384, "ecdsa-p256-sha256"), (P256, "rsa-pss-sha512")],
)
async def test_an_alg_that_does_not_fit_the_key_is_rejected(
    verifier: CallbackVerifier, mocked: aioresponses, key: Any, alg: str
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(key)}])
    headers = signed_headers(P256, alg="ecdsa-p256-sha256")
    headers["Signature-Input"] = headers["Signature-Input"].replace("ecdsa-p256-sha256", alg)
    assert await rejected(verifier, headers) == "key does not fit the signature alg"


async def test_a_signature_by_another_key_is_rejected(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    assert await rejected(verifier, signed_headers(OTHER_P256)) == "signature does not verify"
    raw = signed_headers(OTHER_P256, raw=True)
    assert await rejected(verifier, raw) == "signature does not verify"


async def test_an_unknown_keyid_refetches_once_then_not_within_the_interval(
    verifier: CallbackVerifier, mocked: aioresponses, clock: Clock
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    await verify(verifier, signed_headers())
    assert key_fetches(mocked) == 1

    forged = signed_headers(OTHER_P256, key_id="FORGED:1")
    assert await rejected(verifier, forged) == "unknown keyid"
    assert key_fetches(mocked) == 2  # exactly one refetch

    for step in range(20):  # a flood of bad keyids within the interval
        clock.now = NOW + step
        headers = signed_headers(OTHER_P256, key_id=f"FORGED:{step}", created=int(clock.now))
        assert await rejected(verifier, headers) == "unknown keyid"
    assert key_fetches(mocked) == 2

    await verify(verifier, signed_headers(created=int(clock.now)))  # known keys still work
    clock.now = NOW + REFETCH_INTERVAL
    headers = signed_headers(OTHER_P256, key_id="FORGED:X", created=int(clock.now))
    assert await rejected(verifier, headers) == "unknown keyid"
    assert key_fetches(mocked) == 3


async def test_concurrent_callbacks_share_one_fetch(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    await asyncio.gather(*(verify(verifier, signed_headers()) for _ in range(10)))
    assert key_fetches(mocked) == 1
    forged = [signed_headers(OTHER_P256, key_id=f"FORGED:{n}") for n in range(10)]
    results = await asyncio.gather(*(verify(verifier, h) for h in forged), return_exceptions=True)
    assert {getattr(r, "reason", None) for r in results} == {"unknown keyid"}
    assert key_fetches(mocked) == 2


async def test_a_failed_refetch_escapes_and_the_known_keys_stay(
    verifier: CallbackVerifier, mocked: aioresponses
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}], repeat=False)
    mocked.get(KEYS_URL, status=500, body="")
    await verify(verifier, signed_headers())
    with pytest.raises(ProviderUnavailable):
        await verify(verifier, signed_headers(OTHER_P256, key_id="NEW:1"))
    await verify(verifier, signed_headers())
    assert key_fetches(mocked) == 2


async def test_a_rotated_key_is_found_by_the_refetch(
    verifier: CallbackVerifier, mocked: aioresponses, clock: Clock
) -> None:
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}], repeat=False)
    rotated_keys = [
        {"id": KEY_ID, "key": public_pem(P256)},
        {"id": "HTTP_EC_P256_KEY:2", "key": public_pem(P384)},
    ]
    serve_keys(mocked, rotated_keys, repeat=False)
    await verify(verifier, signed_headers())
    clock.now = NOW + REFETCH_INTERVAL
    rotated = signed_headers(
        P384, alg="ecdsa-p384-sha384", key_id="HTTP_EC_P256_KEY:2", created=int(clock.now)
    )
    await verify(verifier, rotated)
    assert key_fetches(mocked) == 2


async def test_a_failed_key_fetch_escapes_and_is_not_repeated_within_the_interval(
    verifier: CallbackVerifier, mocked: aioresponses, clock: Clock
) -> None:
    mocked.get(KEYS_URL, status=503, body="")
    serve_keys(mocked, [{"id": KEY_ID, "key": public_pem(P256)}])
    with pytest.raises(ProviderUnavailable):
        await verify(verifier, signed_headers())
    with pytest.raises(ProviderUnavailable):  # no second call: answer 503, PawaPay retries
        await verify(verifier, signed_headers())
    assert key_fetches(mocked) == 1
    clock.now = NOW + REFETCH_INTERVAL
    await verify(verifier, signed_headers(created=int(clock.now)))
    assert key_fetches(mocked) == 2


# -- a pinned key ----------------------------------------------------------------------------


@pytest.mark.parametrize("pinned", [public_pem(P256), public_der_b64(P256)])
async def test_a_pinned_key_never_calls_pawapay_and_ignores_the_keyid(
    client: PawapayClient, mocked: aioresponses, pinned: str
) -> None:
    verifier = CallbackVerifier(client, pinned_public_key=pinned, clock=Clock())
    await verify(verifier, signed_headers(key_id="WHATEVER"))
    await verify(verifier, signed_headers(raw=True))
    await verify(verifier, signed_headers(key_id=None))
    assert await rejected(verifier, signed_headers(OTHER_P256)) == "signature does not verify"
    assert not mocked.requests


def test_an_unreadable_pinned_key_is_refused_without_echoing_it(client: PawapayClient) -> None:
    with pytest.raises(ValueError, match="public key") as caught:
        CallbackVerifier(client, pinned_public_key="-----BEGIN PUBLIC KEY-----SECRETISH")
    assert "SECRETISH" not in str(caught.value)


# -- public_keys() ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        # As PawaPay's v2 API reference shows it.
        [{"id": KEY_ID, "key": public_pem(P256)}],
        [{"id": KEY_ID, "key": public_der_b64(P256)}],
        [{"id": KEY_ID, "key": public_pem(P256).replace("\n", "\\n")}],
        [{"id": KEY_ID, "key": public_pem(P256).replace("\n", "")}],
        {"id": KEY_ID, "key": public_pem(P256)},
        {"keys": [{"id": KEY_ID, "key": public_pem(P256)}]},
        [{"keyId": KEY_ID, "publicKey": public_pem(P256)}],
        # Unreadable entries are skipped, not fatal.
        [{"id": KEY_ID, "key": public_pem(P256)}, {"id": "BAD", "key": "nonsense"}, {"key": "x"}],
    ],
)
async def test_public_keys_reads_the_shapes_pawapay_may_answer(
    client: PawapayClient, mocked: aioresponses, records: list[AttemptRecord], answer: Any
) -> None:
    mocked.get(KEYS_URL, payload=answer)
    assert await client.public_keys() == {KEY_ID: public_pem(P256)}
    call = mocked.requests[("GET", URL(KEYS_URL))][0]
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert [(r.operation, r.method, r.url) for r in records] == [
        ("public_keys", "GET", "/v2/public-key/http")
    ]


async def test_public_keys_lists_every_key(client: PawapayClient, mocked: aioresponses) -> None:
    mocked.get(
        KEYS_URL,
        payload=[
            {"id": KEY_ID, "key": public_pem(P256)},
            {"id": "HTTP_RSA_KEY:1", "key": public_pem(RSA)},
        ],
    )
    assert await client.public_keys() == {
        KEY_ID: public_pem(P256),
        "HTTP_RSA_KEY:1": public_pem(RSA),
    }


async def test_public_keys_may_be_empty(client: PawapayClient, mocked: aioresponses) -> None:
    mocked.get(KEYS_URL, payload=[])
    assert await client.public_keys() == {}


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "nothing here"},
        [{"id": KEY_ID, "key": "not a key"}],
        "a string",
        42,
        None,
    ],
)
async def test_an_unreadable_public_keys_answer_is_a_response_error(
    client: PawapayClient, mocked: aioresponses, answer: Any
) -> None:
    mocked.get(KEYS_URL, payload=answer)
    with pytest.raises(ProviderResponseInvalid):
        await client.public_keys()


async def test_a_non_json_public_keys_answer_is_a_response_error(
    client: PawapayClient, mocked: aioresponses
) -> None:
    mocked.get(KEYS_URL, body="<html>", content_type="text/html")
    with pytest.raises(ProviderResponseInvalid):
        await client.public_keys()


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, ProviderAuthFailed), (500, ProviderUnavailable), (404, ProviderResponseInvalid)],
)
async def test_public_keys_errors_are_typed(
    client: PawapayClient, mocked: aioresponses, status: int, error: type[Exception]
) -> None:
    mocked.get(KEYS_URL, status=status, payload={"failureReason": {"failureCode": "X"}})
    with pytest.raises(error):
        await client.public_keys()
