"""Verification of PawaPay's signed callbacks (RFC 9421 HTTP Message Signatures, RFC 9530
Content-Digest).

When signed callbacks are enabled on the account, PawaPay POSTs each callback with
``Content-Digest`` (``sha-256`` or ``sha-512`` of the body), ``Signature-Date``,
``Signature-Input`` and ``Signature`` under the label ``sig-pp``, signed with a key whose public
half ``GET /v2/public-key/http`` lists by id (``keyid``), for example::

    Signature-Input: sig-pp=("@method" "@authority" "@path" "signature-date" "content-digest"
        "content-type");alg="ecdsa-p256-sha256";keyid="HTTP_EC_P256_KEY:1";created=...;expires=...

A callback is accepted only when all of these hold:

- ``Content-Digest`` is present, has a ``sha-256`` or ``sha-512`` member, and every such member
  matches the exact body bytes;
- ``Signature-Input`` and ``Signature`` parse as RFC 8941 dictionaries and share a label
  (``sig-pp``, or their only label);
- the covered components include ``content-digest``, ``@method`` and the target (``@authority``
  with ``@path``, or ``@target-uri``); every covered header is present; no component carries
  parameters;
- ``created``, ``expires``, ``alg`` and ``keyid`` are given; the signature is not expired, not
  older than ``max_age`` and not created in the future (beyond a little clock skew);
- ``alg`` is one of ``ecdsa-p256-sha256``, ``ecdsa-p384-sha384``, ``rsa-pss-sha512``,
  ``rsa-v1_5-sha256`` and fits the key; ECDSA signatures may be DER (as PawaPay's Java and Node
  examples produce them) or raw r||s (as RFC 9421 specifies);
- the signature verifies over the RFC 9421 signature base.

Keys are fetched from PawaPay when first needed and cached. An unknown ``keyid`` triggers one
refetch (PawaPay rotated its key), but there is at most one refetch per ``REFETCH_INTERVAL``
seconds, and a first load that failed is not retried sooner either, so a flood of forged keyids
cannot turn into a flood of calls to PawaPay. Only the key fetch itself can raise a
ProviderError (the caller answers 5xx and PawaPay retries); everything about the callback raises
CallbackRejected. A pinned key (PEM or base64 DER) replaces the fetch: PawaPay is then never
called and ``keyid`` is ignored.

``url`` must be the URL PawaPay called, as PawaPay saw it: behind a proxy that rewrites the host
or path, pass the public one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kunpay_worker.providers.errors import ProviderUnavailable
from kunpay_worker.providers.pawapay.client import (
    DERIVED_COMPONENTS,
    NAME,
    SIGNATURE_LABEL,
    PawapayClient,
    public_key_pem,
    signature_base,
)

__all__ = [
    "REFETCH_INTERVAL",
    "SUPPORTED_ALGORITHMS",
    "CallbackRejected",
    "CallbackVerifier",
]

# At most one fetch of PawaPay's public keys per this many seconds.
REFETCH_INTERVAL = 60.0
# How far in the future a signature's ``created`` may be (clocks differ a little).
CLOCK_SKEW = 30.0
SUPPORTED_ALGORITHMS = frozenset(
    {"ecdsa-p256-sha256", "ecdsa-p384-sha384", "rsa-pss-sha512", "rsa-v1_5-sha256"}
)
# RFC 9530 digest algorithm → hashlib name.
_DIGESTS = {"sha-256": "sha256", "sha-512": "sha512"}
# alg → (curve name, hash, bytes per coordinate) for ECDSA.
_ECDSA: dict[str, tuple[str, type[hashes.HashAlgorithm], int]] = {
    "ecdsa-p256-sha256": ("secp256r1", hashes.SHA256, 32),
    "ecdsa-p384-sha384": ("secp384r1", hashes.SHA384, 48),
}


class CallbackRejected(Exception):
    """The callback is not provably PawaPay's: ``reason`` says why, briefly (never key
    material, never the expected digest or signature)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallbackVerifier:
    """Checks that a callback was signed by PawaPay and its body is the one signed."""

    def __init__(
        self,
        client: PawapayClient,
        *,
        pinned_public_key: str | None = None,
        clock: Callable[[], float] = time.time,
        max_age: float = 300,
    ) -> None:
        self._client = client
        self._clock = clock
        self._max_age = max_age
        self._pinned: PublicKeyTypes | None = None
        if pinned_public_key is not None:
            # ValueError (without the key in its message) when it cannot be read.
            self._pinned = _load_pem(public_key_pem(pinned_public_key))
        self._keys: dict[str, PublicKeyTypes] | None = None  # None: not fetched yet
        # When the keys were last tried while none were known (the first load, or after it
        # failed), and when they were last refetched for an unknown keyid.
        self._loaded_at: float | None = None
        self._refetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Return when the callback is authentic; raise CallbackRejected when it is not.

        ``url`` is the URL PawaPay called (its authority and path are signed) and ``body`` the
        exact bytes received. ``headers`` may be a multi-dict: repeated fields are combined as
        RFC 9421 says. A ProviderError escapes when PawaPay's keys are needed and cannot be
        fetched (answer 5xx: PawaPay retries), never for a bad callback."""
        fields = _fields(headers)
        _check_digest(fields.get("content-digest"), body)
        covered, params, signature = _signature(fields)
        names = _covered_names(covered, fields)
        key_id, algorithm = self._check_params(params)
        key = await self._key(key_id)
        try:
            base = signature_base(
                method,
                url,
                {name: fields[name] for name in names if not name.startswith("@")},
                _serialize_inner_list(covered),
                components=names,
            )
        except ValueError as exc:
            raise CallbackRejected("request URL unusable for the signature base") from exc
        if not _verifies(key, algorithm, signature, base.encode()):
            raise CallbackRejected("signature does not verify")

    # -- parameters and keys -----------------------------------------------------------------

    def _check_params(self, params: _Params) -> tuple[str | None, str]:
        """(keyid, alg) once the parameters say the signature is current and usable."""
        created, expires = _integer(params.get("created")), _integer(params.get("expires"))
        if created is None or expires is None:
            raise CallbackRejected("signature created/expires missing")
        now = self._clock()
        if expires < created:
            raise CallbackRejected("signature expires before it was created")
        if now > expires:
            raise CallbackRejected("signature expired")
        if now - created > self._max_age:
            raise CallbackRejected("signature too old")
        if created - now > CLOCK_SKEW:
            raise CallbackRejected("signature created in the future")
        algorithm = _string(params.get("alg"))
        if algorithm is None:
            raise CallbackRejected("signature alg missing")
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise CallbackRejected("unsupported signature alg")
        key_id = _string(params.get("keyid"))
        if key_id is None and self._pinned is None:
            raise CallbackRejected("signature keyid missing")
        return key_id, algorithm

    async def _key(self, key_id: str | None) -> PublicKeyTypes:
        if self._pinned is not None:
            return self._pinned
        if key_id is None:
            raise CallbackRejected("signature keyid missing")
        if self._keys is not None and key_id in self._keys:
            return self._keys[key_id]
        async with self._lock:
            if self._keys is not None and key_id in self._keys:
                return self._keys[key_id]  # another callback's fetch brought it
            now = self._clock()
            last = self._loaded_at if self._keys is None else self._refetched_at
            if last is not None and 0 <= now - last < REFETCH_INTERVAL:
                if self._keys is None:
                    # Never had PawaPay's keys: not the callback's fault, let it be retried.
                    raise ProviderUnavailable(
                        "PawaPay public keys unavailable (last fetch failed)", provider=NAME
                    )
                raise CallbackRejected("unknown keyid")
            if self._keys is None:
                self._loaded_at = now
            else:
                self._refetched_at = now
            pems = await self._client.public_keys()  # ProviderError escapes
            keys: dict[str, PublicKeyTypes] = {}
            for kid, pem in pems.items():
                try:
                    keys[kid] = _load_pem(pem)
                except ValueError:
                    continue
            self._keys = keys
            if key_id not in keys:
                raise CallbackRejected("unknown keyid")
            return keys[key_id]


# -- headers ---------------------------------------------------------------------------------


def _fields(headers: Mapping[str, str]) -> dict[str, str]:
    """Header fields by lowercased name; repeated fields joined with ", " (RFC 9421 §2.1)."""
    values: dict[str, list[str]] = {}
    for name, value in headers.items():
        values.setdefault(name.lower(), []).append(value.strip())
    return {name: ", ".join(parts) for name, parts in values.items()}


def _check_digest(header: str | None, body: bytes) -> None:
    if header is None:
        raise CallbackRejected("Content-Digest missing")
    try:
        digests = _Parser(header).dictionary()
    except ValueError as exc:
        raise CallbackRejected("Content-Digest unparseable") from exc
    checked = False
    for name, member in digests.items():
        if name not in _DIGESTS:
            continue  # other algorithms may be listed; the ones we know must all match
        if not isinstance(member, _Item) or not isinstance(member.value, bytes):
            raise CallbackRejected("Content-Digest unparseable")
        expected = hashlib.new(_DIGESTS[name], body).digest()
        if not hmac.compare_digest(expected, member.value):
            raise CallbackRejected("Content-Digest does not match the body")
        checked = True
    if not checked:
        raise CallbackRejected("Content-Digest has no sha-256 or sha-512")


def _signature(fields: Mapping[str, str]) -> tuple[_InnerList, _Params, bytes]:
    """(covered components, signature parameters, signature bytes) of the PawaPay label."""
    if "signature-input" not in fields:
        raise CallbackRejected("Signature-Input missing")
    if "signature" not in fields:
        raise CallbackRejected("Signature missing")
    try:
        inputs = _Parser(fields["signature-input"]).dictionary()
    except ValueError as exc:
        raise CallbackRejected("Signature-Input unparseable") from exc
    try:
        signatures = _Parser(fields["signature"]).dictionary()
    except ValueError as exc:
        raise CallbackRejected("Signature unparseable") from exc
    if SIGNATURE_LABEL in inputs and SIGNATURE_LABEL in signatures:
        label = SIGNATURE_LABEL
    elif len(inputs) == 1 and next(iter(inputs)) in signatures:
        label = next(iter(inputs))
    else:
        raise CallbackRejected("no matching signature label")
    covered, signed = inputs[label], signatures[label]
    if not isinstance(covered, _InnerList):
        raise CallbackRejected("Signature-Input unparseable")
    if not isinstance(signed, _Item) or not isinstance(signed.value, bytes) or not signed.value:
        raise CallbackRejected("Signature unparseable")
    return covered, covered.params, signed.value


def _covered_names(covered: _InnerList, fields: Mapping[str, str]) -> list[str]:
    names: list[str] = []
    for item in covered.items:
        name = _string(item.value)
        if name is None:
            raise CallbackRejected("Signature-Input unparseable")
        if item.params:
            raise CallbackRejected("component parameters are not supported")
        if name != name.lower() or name in names:
            raise CallbackRejected("Signature-Input unparseable")
        if name.startswith("@"):
            if name not in DERIVED_COMPONENTS:
                raise CallbackRejected(f"component {name} not supported")
        elif name not in fields:
            raise CallbackRejected(f"covered header {name} missing")
        names.append(name)
    target = "@target-uri" in names or {"@authority", "@path"} <= set(names)
    for required, present in (
        ("content-digest", "content-digest" in names),
        ("@method", "@method" in names),
        ("@authority and @path", target),
    ):
        if not present:
            raise CallbackRejected(f"signature does not cover {required}")
    return names


# -- cryptography ----------------------------------------------------------------------------


def _load_pem(pem: str) -> PublicKeyTypes:
    try:
        return serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a readable public key") from exc


def _verifies(key: PublicKeyTypes, algorithm: str, signature: bytes, data: bytes) -> bool:
    if algorithm in _ECDSA:
        curve, digest, size = _ECDSA[algorithm]
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve:
            raise CallbackRejected("key does not fit the signature alg")
        candidates = [signature]  # DER, as PawaPay's examples sign
        if len(signature) == 2 * size:  # raw r||s, as RFC 9421 specifies
            r, s = signature[:size], signature[size:]
            candidates.append(encode_dss_signature(int.from_bytes(r), int.from_bytes(s)))
        for candidate in candidates:
            try:
                key.verify(candidate, data, ec.ECDSA(digest()))
            except InvalidSignature:
                continue
            return True
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        raise CallbackRejected("key does not fit the signature alg")
    try:
        if algorithm == "rsa-pss-sha512":
            key.verify(
                signature,
                data,
                padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64),
                hashes.SHA512(),
            )
        else:  # rsa-v1_5-sha256
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


# -- RFC 8941 structured fields (the part RFC 9421 uses) -------------------------------------


class _Token(str):
    """An sf-token, kept apart from an sf-string (they serialise differently)."""

    __slots__ = ()


_Bare = bool | int | Decimal | str | bytes
_Params = dict[str, _Bare]


@dataclass(frozen=True, slots=True)
class _Item:
    value: _Bare
    params: _Params


@dataclass(frozen=True, slots=True)
class _InnerList:
    items: tuple[_Item, ...]
    params: _Params


_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")


class _Parser:
    """RFC 8941 §4.2 parsing of a dictionary whose members are items or inner lists."""

    def __init__(self, text: str) -> None:
        self._text = text.strip(" \t")
        self._at = 0

    def _peek(self) -> str:
        return self._text[self._at] if self._at < len(self._text) else ""

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise ValueError(f"expected {char!r} at {self._at}")
        self._at += 1

    def _skip(self, chars: str) -> None:
        while self._peek() and self._peek() in chars:
            self._at += 1

    def dictionary(self) -> dict[str, _Item | _InnerList]:
        members: dict[str, _Item | _InnerList] = {}
        if not self._text:
            raise ValueError("empty dictionary")
        while True:
            key = self._key()
            if self._peek() == "=":
                self._at += 1
                members[key] = self._member()
            else:
                members[key] = _Item(True, self._params())
            self._skip(" \t")
            if not self._peek():
                return members
            self._expect(",")
            self._skip(" \t")
            if not self._peek():
                raise ValueError("trailing comma")

    def _member(self) -> _Item | _InnerList:
        if self._peek() == "(":
            return self._inner_list()
        return self._item()

    def _inner_list(self) -> _InnerList:
        self._expect("(")
        items: list[_Item] = []
        while True:
            self._skip(" ")
            if self._peek() == ")":
                self._at += 1
                return _InnerList(tuple(items), self._params())
            items.append(self._item())
            if self._peek() not in (" ", ")"):
                raise ValueError(f"bad inner list at {self._at}")

    def _item(self) -> _Item:
        value = self._bare()
        return _Item(value, self._params())

    def _params(self) -> _Params:
        params: _Params = {}
        while self._peek() == ";":
            self._at += 1
            self._skip(" ")
            key = self._key()
            value: _Bare = True
            if self._peek() == "=":
                self._at += 1
                value = self._bare()
            params[key] = value
        return params

    def _key(self) -> str:
        match = _KEY.match(self._text, self._at)
        if match is None:
            raise ValueError(f"bad key at {self._at}")
        self._at = match.end()
        return match.group()

    def _bare(self) -> _Bare:
        char = self._peek()
        if char == "-" or char.isdigit():
            return self._number()
        if char == '"':
            return self._string()
        if char == ":":
            return self._bytes()
        if char == "?":
            return self._boolean()
        if char == "*" or (char.isascii() and char.isalpha()):
            match = _TOKEN.match(self._text, self._at)
            assert match is not None  # noqa: S101 - the first character matched
            self._at = match.end()
            return _Token(match.group())
        raise ValueError(f"bad item at {self._at}")

    def _number(self) -> int | Decimal:
        match = _NUMBER.match(self._text, self._at)
        if match is None:
            raise ValueError(f"bad number at {self._at}")
        text = match.group()
        whole, _, fraction = text.lstrip("-").partition(".")
        if match.group(1) is None:
            if len(whole) > 15:
                raise ValueError("integer too long")
            self._at = match.end()
            return int(text)
        if len(whole) > 12 or len(fraction) > 3:
            raise ValueError("decimal too long")
        self._at = match.end()
        return Decimal(text)

    def _string(self) -> str:
        self._expect('"')
        out: list[str] = []
        while True:
            char = self._peek()
            if not char:
                raise ValueError("unterminated string")
            self._at += 1
            if char == "\\":
                escaped = self._peek()
                if escaped not in ('"', "\\"):
                    raise ValueError("bad escape in string")
                out.append(escaped)
                self._at += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise ValueError("bad character in string")
            else:
                out.append(char)

    def _bytes(self) -> bytes:
        self._expect(":")
        end = self._text.find(":", self._at)
        if end < 0:
            raise ValueError("unterminated byte sequence")
        encoded = self._text[self._at : end]
        if not _BASE64.fullmatch(encoded):
            raise ValueError("bad byte sequence")
        self._at = end + 1
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("bad byte sequence") from exc

    def _boolean(self) -> bool:
        self._expect("?")
        char = self._peek()
        if char not in ("0", "1"):
            raise ValueError("bad boolean")
        self._at += 1
        return char == "1"


def _integer(value: _Bare | None) -> int | None:
    """An sf-integer parameter, or None (absent or another type: booleans are not integers)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _string(value: _Bare | None) -> str | None:
    """An sf-string parameter, or None (absent or another type: tokens are not strings)."""
    return value if isinstance(value, str) and not isinstance(value, _Token) else None


def _serialize_bare(value: _Bare) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        text = format(value.quantize(Decimal("0.001"), rounding=ROUND_HALF_EVEN), "f")
        whole, _, fraction = text.partition(".")
        return f"{whole}.{fraction.rstrip('0') or '0'}"
    if isinstance(value, bytes):
        return f":{base64.b64encode(value).decode()}:"
    if isinstance(value, _Token):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_params(params: _Params) -> str:
    return "".join(
        f";{key}" if value is True else f";{key}={_serialize_bare(value)}"
        for key, value in params.items()
    )


def _serialize_inner_list(inner: _InnerList) -> str:
    """RFC 8941 §4.1 serialisation: the ``@signature-params`` value (RFC 9421 §2.3)."""
    items = " ".join(_serialize_bare(i.value) + _serialize_params(i.params) for i in inner.items)
    return f"({items}){_serialize_params(inner.params)}"
