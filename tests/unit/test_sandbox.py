"""The sandbox is strict where MTN is strict, and its magic numbers are documented."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kunpay_worker.sandbox import SandboxConfig, build_app
from kunpay_worker.sandbox.app import MTN_KEY
from kunpay_worker.sandbox.scenarios import MAGIC_NUMBERS, Behaviour

README = Path(__file__).parents[2] / "README.md"
BASIC = "Basic " + base64.b64encode(b"api-user:api-key").decode()


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(SandboxConfig(settle_seconds=0, slow_seconds=0))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def token(client: TestClient[Any, Any]) -> dict[str, str]:
    resp = await client.post(
        "/collection/token/",
        headers={"Authorization": BASIC, "Ocp-Apim-Subscription-Key": "k"},
    )
    assert resp.status == 200
    body = await resp.json()
    return {
        "Authorization": f"Bearer {body['access_token']}",
        "Ocp-Apim-Subscription-Key": "k",
        "X-Target-Environment": "sandbox",
    }


def rtp_body(number: str = "237670000000", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": "5000",
        "currency": "XAF",
        "externalId": "e-1",
        "payer": {"partyIdType": "MSISDN", "partyId": number},
        "payerMessage": "Payment",
        "payeeNote": "Payment",
    }
    body.update(overrides)
    return body


async def test_tokens_need_basic_auth_and_a_subscription_key(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/collection/token/", headers={"Authorization": BASIC})).status == 401
    no_auth = await client.post("/collection/token/", headers={"Ocp-Apim-Subscription-Key": "k"})
    assert no_auth.status == 401


async def test_request_to_pay_without_a_valid_token_is_401(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/collection/v1_0/requesttopay",
        json=rtp_body(),
        headers={
            "Authorization": "Bearer nope",
            "Ocp-Apim-Subscription-Key": "k",
            "X-Target-Environment": "sandbox",
            "X-Reference-Id": str(uuid.uuid4()),
        },
    )
    assert resp.status == 401


@pytest.mark.parametrize(
    "reference", ["not-a-uuid", str(uuid.uuid1()), str(uuid.uuid5(uuid.NAMESPACE_DNS, "x")), ""]
)
async def test_a_reference_that_is_not_a_uuid4_is_400(
    client: TestClient[Any, Any], reference: str
) -> None:
    headers = await token(client)
    resp = await client.post(
        "/collection/v1_0/requesttopay",
        json=rtp_body(),
        headers={**headers, "X-Reference-Id": reference},
    )
    assert resp.status == 400


async def test_a_reused_reference_is_409_and_counted(client: TestClient[Any, Any]) -> None:
    headers = {**await token(client), "X-Reference-Id": str(uuid.uuid4())}
    first = await client.post("/collection/v1_0/requesttopay", json=rtp_body(), headers=headers)
    second = await client.post("/collection/v1_0/requesttopay", json=rtp_body(), headers=headers)
    assert (first.status, second.status) == (202, 409)
    counts = await (await client.get("/_sandbox/mtn/requests")).json()
    assert counts["requests"][headers["X-Reference-Id"]] == 2
    assert counts["initiations"][headers["X-Reference-Id"]] == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (rtp_body(amount="5000.5"), 400),
        (rtp_body(amount=5000), 400),
        (rtp_body(currency="USD"), 400),
        (rtp_body(payer={"partyIdType": "MSISDN", "partyId": "+237670000000"}), 400),
        (rtp_body(payerMessage=""), 500),
    ],
)
async def test_bad_bodies_are_refused_like_mtn_does(
    client: TestClient[Any, Any], body: dict[str, Any], status: int
) -> None:
    headers = {**await token(client), "X-Reference-Id": str(uuid.uuid4())}
    resp = await client.post("/collection/v1_0/requesttopay", json=body, headers=headers)
    assert resp.status == status


@pytest.mark.parametrize(
    ("number", "status", "reason"),
    [
        ("237670000000", "SUCCESSFUL", None),
        ("237699999999", "SUCCESSFUL", None),
        ("237670000002", "FAILED", "NOT_ENOUGH_FUNDS"),
        ("237670000010", "PENDING", None),
    ],
)
async def test_the_payer_number_picks_the_outcome(
    client: TestClient[Any, Any], number: str, status: str, reason: str | None
) -> None:
    reference = str(uuid.uuid4())
    headers = {**await token(client), "X-Reference-Id": reference}
    assert (
        await client.post("/collection/v1_0/requesttopay", json=rtp_body(number), headers=headers)
    ).status == 202
    resp = await client.get(f"/collection/v1_0/requesttopay/{reference}", headers=headers)
    body = await resp.json()
    assert body["status"] == status
    assert body.get("reason") == reason


async def test_an_unknown_reference_is_404(client: TestClient[Any, Any]) -> None:
    headers = await token(client)
    resp = await client.get(f"/collection/v1_0/requesttopay/{uuid.uuid4()}", headers=headers)
    assert resp.status == 404


async def test_error_once_fails_first_then_accepts_the_resend(client: TestClient[Any, Any]) -> None:
    reference = str(uuid.uuid4())
    headers = {**await token(client), "X-Reference-Id": reference}
    body = rtp_body("237670000020")
    assert (
        await client.post("/collection/v1_0/requesttopay", json=body, headers=headers)
    ).status == 500
    assert (
        await client.get(f"/collection/v1_0/requesttopay/{reference}", headers=headers)
    ).status == 404
    assert (
        await client.post("/collection/v1_0/requesttopay", json=body, headers=headers)
    ).status == 202


async def test_a_held_reply_is_registered_and_answers_when_released(
    client: TestClient[Any, Any],
) -> None:
    mtn = client.server.app[MTN_KEY]
    reference = str(uuid.uuid4())
    headers = {**await token(client), "X-Reference-Id": reference}
    pending = asyncio.ensure_future(
        client.post("/collection/v1_0/requesttopay", json=rtp_body("237670000030"), headers=headers)
    )
    async with asyncio.timeout(5):
        await mtn.wait_held(1)
    assert reference in mtn.payments
    assert not pending.done()
    mtn.release()
    async with asyncio.timeout(5):
        assert (await pending).status == 202


async def test_revoked_tokens_are_refused(client: TestClient[Any, Any]) -> None:
    headers = await token(client)
    await client.post("/_sandbox/mtn/revoke-tokens")
    resp = await client.get(f"/collection/v1_0/requesttopay/{uuid.uuid4()}", headers=headers)
    assert resp.status == 401


KEYWORDS = {
    Behaviour.SUCCEED: "succeeds",
    Behaviour.PENDING: "PENDING",
    Behaviour.LATE_SUCCESS: "late-seconds",
    Behaviour.ERROR_ONCE: "500",
    Behaviour.ERROR_AFTER_ACCEPT: "500",
    Behaviour.ERROR_ALWAYS: "500",
    Behaviour.THROTTLE_ONCE: "429",
    Behaviour.HOLD: "held",
    Behaviour.SLOW: "slow-seconds",
    Behaviour.INACTIVE: "inactive",
    Behaviour.REFUND_FAILS: "refunds",
}


def test_the_readme_lists_every_magic_number() -> None:
    text = README.read_text()
    for number, scenario in MAGIC_NUMBERS.items():
        row = re.search(
            rf"^\|\s*`6700000{number}`, `6900000{number}`\s*\|(.+)$", text, re.MULTILINE
        )
        assert row, f"README has no row for magic number {number}"
        expected = (
            scenario.failure
            if scenario.behaviour is Behaviour.FAIL
            else KEYWORDS[scenario.behaviour]
        )
        assert expected is not None
        assert expected in row.group(1), f"README row for {number} does not say {expected}"


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_settled_payments_call_back_with_the_configured_verb(method: str) -> None:
    from aiohttp import web

    received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def callback(request: web.Request) -> web.Response:
        await received.put((request.method, await request.json()))
        return web.Response()

    receiver = web.Application()
    receiver.router.add_route("*", "/cb", callback)
    async with (
        TestClient(TestServer(receiver)) as hook,
        TestClient(
            TestServer(build_app(SandboxConfig(settle_seconds=0, callback_method=method)))
        ) as sandbox,
    ):
        reference = str(uuid.uuid4())
        headers = {
            **await token(sandbox),
            "X-Reference-Id": reference,
            "X-Callback-Url": str(hook.make_url("/cb")),
        }
        resp = await sandbox.post(
            "/collection/v1_0/requesttopay", json=rtp_body("237670000002"), headers=headers
        )
        assert resp.status == 202
        async with asyncio.timeout(5):
            verb, body = await received.get()
    assert verb == method
    assert body["referenceId"] == reference
    assert body["status"] == "FAILED"
    assert body["reason"] == "NOT_ENOUGH_FUNDS"
