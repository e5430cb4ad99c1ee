"""The PawaPay simulator signs its callbacks as PawaPay does when signed callbacks are enabled,
publishes its key on GET /v2/public-key/http, and what it signs passes CallbackVerifier."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict

from kunpay_worker.providers.pawapay.callbacks import CallbackRejected, CallbackVerifier
from kunpay_worker.providers.pawapay.client import PawapayClient
from kunpay_worker.sandbox.common import SandboxConfig
from kunpay_worker.sandbox.pawapay import CALLBACK_KEY_ID, PawapaySandbox
from kunpay_worker.settings import PawapaySettings

TOKEN = "sandbox-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_747_294_736  # 2025-05-15T07:38:56Z


@dataclass(frozen=True)
class Received:
    method: str
    url: str
    headers: CIMultiDict[str]
    body: bytes


def sandbox_app(sim: PawapaySandbox) -> web.Application:
    app = web.Application()
    app.add_routes(sim.routes())

    async def close(_app: web.Application) -> None:
        await sim.close()

    app.on_cleanup.append(close)
    return app


def deposit(number: str = "237670000000") -> dict[str, Any]:
    return {
        "depositId": str(uuid.uuid4()),
        "amount": "5000",
        "currency": "XAF",
        "payer": {
            "type": "MMO",
            "accountDetails": {"phoneNumber": number, "provider": "MTN_MOMO_CMR"},
        },
    }


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[TestClient[Any, Any], asyncio.Queue[Received]]]:
    """A local merchant endpoint that keeps every callback exactly as it arrived."""
    received: asyncio.Queue[Received] = asyncio.Queue()

    async def callback(request: web.Request) -> web.Response:
        await received.put(
            Received(
                request.method, str(request.url), CIMultiDict(request.headers), await request.read()
            )
        )
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/pawapay", callback)
    async with TestClient(TestServer(app)) as hook:
        yield hook, received


async def callback_of(
    sim: PawapaySandbox, received: asyncio.Queue[Received]
) -> tuple[TestClient[Any, Any], Received]:
    """Start the simulator, make one deposit settle, return the callback it POSTed."""
    client = TestClient(TestServer(sandbox_app(sim)))
    await client.start_server()
    resp = await client.post("/v2/deposits", json=deposit(), headers=AUTH)
    assert (await resp.json())["status"] == "ACCEPTED"
    async with asyncio.timeout(5):
        return client, await received.get()


def verifier_for(
    client: TestClient[Any, Any], session: aiohttp.ClientSession, now: float = NOW
) -> CallbackVerifier:
    backend = PawapayClient(
        PawapaySettings(base_url=str(client.make_url("")), api_token=TOKEN),  # type: ignore[arg-type]
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
    )
    return CallbackVerifier(backend, clock=lambda: now)


# -- the public key --------------------------------------------------------------------------


async def test_the_simulator_serves_its_callback_key() -> None:
    sim = PawapaySandbox(SandboxConfig(pawapay_sign_callbacks=True), api_token=TOKEN)
    async with TestClient(TestServer(sandbox_app(sim))) as client:
        resp = await client.get("/v2/public-key/http", headers=AUTH)
        assert resp.status == 200
        keys = await resp.json()
        assert [entry["id"] for entry in keys] == [CALLBACK_KEY_ID]
        key = serialization.load_pem_public_key(keys[0]["key"].encode())
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
        # Bearer auth like every other route.
        assert (await client.get("/v2/public-key/http")).status == 401
        denied = await client.get("/v2/public-key/http", headers={"Authorization": "Bearer x"})
        assert denied.status == 403


async def test_each_simulator_run_has_its_own_key() -> None:
    config = SandboxConfig(pawapay_sign_callbacks=True)
    assert PawapaySandbox(config).callback_public_key != PawapaySandbox(config).callback_public_key


async def test_without_signed_callbacks_no_key_is_listed() -> None:
    sim = PawapaySandbox(SandboxConfig(), api_token=TOKEN)
    async with TestClient(TestServer(sandbox_app(sim))) as client:
        resp = await client.get("/v2/public-key/http", headers=AUTH)
        assert (resp.status, await resp.json()) == (200, [])


# -- signed callbacks ------------------------------------------------------------------------


async def test_a_signed_callback_passes_the_verifier_end_to_end(
    receiver: tuple[TestClient[Any, Any], asyncio.Queue[Received]],
) -> None:
    hook, received = receiver
    config = SandboxConfig(
        settle_seconds=0,
        pawapay_callback_url=str(hook.make_url("/pawapay")),
        pawapay_sign_callbacks=True,
    )
    sim = PawapaySandbox(config, api_token=TOKEN, wall_clock=lambda: float(NOW))
    client, callback = await callback_of(sim, received)
    try:
        headers = callback.headers
        assert callback.method == "POST"
        assert headers["Content-Type"] == "application/json"
        assert headers["Signature-Date"] == "2025-05-15T07:38:56Z"
        digest = base64.b64encode(hashlib.sha512(callback.body).digest()).decode()
        assert headers["Content-Digest"] == f"sha-512=:{digest}:"
        assert headers["Signature-Input"] == (
            'sig-pp=("@method" "@authority" "@path" "signature-date" "content-digest" '
            f'"content-type");created={NOW};expires={NOW + 60}'
            f';keyid="{CALLBACK_KEY_ID}";alg="ecdsa-p256-sha256"'
        )
        assert headers["Signature"].startswith("sig-pp=:")
        async with aiohttp.ClientSession() as session:
            verifier = verifier_for(client, session)
            await verifier.verify(
                method=callback.method, url=callback.url, headers=headers, body=callback.body
            )
            # Tampering with what was signed is caught.
            with pytest.raises(CallbackRejected):
                await verifier.verify(
                    method=callback.method,
                    url=callback.url,
                    headers=headers,
                    body=callback.body.replace(b"COMPLETED", b"FAILED"),
                )
            # A minute later the signature has expired.
            late = verifier_for(client, session, now=NOW + 61)
            with pytest.raises(CallbackRejected) as caught:
                await late.verify(
                    method=callback.method, url=callback.url, headers=headers, body=callback.body
                )
            assert caught.value.reason == "signature expired"
        # The callback is still the status data, and nothing was initiated twice.
        (reference,) = sim.initiations
        assert sim.initiations[reference] == 1
        status = await client.get(f"/v2/deposits/{reference}", headers=AUTH)
        assert (await status.json())["data"] == json.loads(callback.body)
    finally:
        await client.close()


async def test_a_callback_signed_by_another_simulator_is_rejected(
    receiver: tuple[TestClient[Any, Any], asyncio.Queue[Received]],
) -> None:
    """The verifier trusts only the key the simulator it asks publishes."""
    hook, received = receiver
    config = SandboxConfig(
        settle_seconds=0,
        pawapay_callback_url=str(hook.make_url("/pawapay")),
        pawapay_sign_callbacks=True,
    )
    signer = PawapaySandbox(config, api_token=TOKEN, wall_clock=lambda: float(NOW))
    other = PawapaySandbox(config, api_token=TOKEN)
    signing_client, callback = await callback_of(signer, received)
    other_client = TestClient(TestServer(sandbox_app(other)))
    await other_client.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(CallbackRejected) as caught:
                await verifier_for(other_client, session).verify(
                    method=callback.method,
                    url=callback.url,
                    headers=callback.headers,
                    body=callback.body,
                )
        assert caught.value.reason == "signature does not verify"
    finally:
        await signing_client.close()
        await other_client.close()


async def test_unsigned_callbacks_carry_no_signature(
    receiver: tuple[TestClient[Any, Any], asyncio.Queue[Received]],
) -> None:
    hook, received = receiver
    config = SandboxConfig(settle_seconds=0, pawapay_callback_url=str(hook.make_url("/pawapay")))
    client, callback = await callback_of(PawapaySandbox(config, api_token=TOKEN), received)
    try:
        assert not {"Signature", "Signature-Input", "Content-Digest"} & set(callback.headers)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(CallbackRejected) as caught:
                await verifier_for(client, session).verify(
                    method=callback.method,
                    url=callback.url,
                    headers=callback.headers,
                    body=callback.body,
                )
        assert caught.value.reason == "Content-Digest missing"
    finally:
        await client.close()
