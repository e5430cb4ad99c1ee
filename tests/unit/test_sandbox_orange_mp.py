"""The Orange "mp" simulator is strict where Orange is, never de-duplicates, and answers the
magic numbers with Orange's codes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kunpay_worker.providers.base import ProviderStatus, SendResult
from kunpay_worker.providers.errors import ProviderRefused
from kunpay_worker.providers.orange_mp.client import OrangeMpClient
from kunpay_worker.sandbox.common import SandboxConfig
from kunpay_worker.sandbox.orange_mp import OrangeMpSandbox
from kunpay_worker.settings import OrangeMpSettings
from tests.provider.contract import money_request

API = "/omcoreapis/1.0.2"
BASIC = "Basic " + base64.b64encode(b"client-id:client-secret").decode()
X_AUTH = "merchant-x-auth"
PIN = "4321"
MERCHANT = "699112233"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sandbox_app(sandbox: OrangeMpSandbox) -> web.Application:
    app = web.Application()
    app.add_routes(sandbox.routes())

    async def close(_app: web.Application) -> None:
        await sandbox.close()

    app.on_cleanup.append(close)
    return app


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(clock: Clock) -> OrangeMpSandbox:
    return OrangeMpSandbox(
        SandboxConfig(settle_seconds=0, slow_seconds=0),
        x_auth_token=X_AUTH,
        pin=PIN,
        clock=clock,
    )


@pytest.fixture
async def client(sandbox: OrangeMpSandbox) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(sandbox_app(sandbox))) as test_client:
        yield test_client


async def auth(client: TestClient[Any, Any]) -> dict[str, str]:
    resp = await client.post(
        "/token", headers={"Authorization": BASIC}, data={"grant_type": "client_credentials"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["token_type"] == "Bearer"
    return {"Authorization": f"Bearer {body['access_token']}", "X-AUTH-TOKEN": X_AUTH}


async def init(client: TestClient[Any, Any], headers: dict[str, str]) -> str:
    resp = await client.post(f"{API}/mp/init", headers=headers)
    assert resp.status == 200
    token: str = (await resp.json())["data"]["payToken"]
    return token


def pay_body(pay_token: str, number: str = "690000000", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subscriberMsisdn": number,
        "channelUserMsisdn": MERCHANT,
        "amount": "5000",
        "description": "Payment order-42",
        "orderId": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "pin": PIN,
        "payToken": pay_token,
        "notifUrl": "",
    }
    body.update(overrides)
    return body


async def status(
    client: TestClient[Any, Any], headers: dict[str, str], pay_token: str
) -> dict[str, Any]:
    resp = await client.get(f"{API}/mp/paymentstatus/{pay_token}", headers=headers)
    assert resp.status == 200
    data: dict[str, Any] = (await resp.json())["data"]
    return data


# -- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "form", "expected"),
    [
        ({}, {"grant_type": "client_credentials"}, 401),
        ({"Authorization": "Basic bm9jb2xvbg=="}, {"grant_type": "client_credentials"}, 401),
        ({"Authorization": "Bearer x"}, {"grant_type": "client_credentials"}, 401),
        ({"Authorization": BASIC}, {"grant_type": "password"}, 400),
        ({"Authorization": BASIC}, {}, 400),
    ],
)
async def test_tokens_need_basic_auth_and_client_credentials(
    client: TestClient[Any, Any], headers: dict[str, str], form: dict[str, str], expected: int
) -> None:
    assert (await client.post("/token", headers=headers, data=form)).status == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"X-AUTH-TOKEN": X_AUTH},
        {"Authorization": "Bearer nope", "X-AUTH-TOKEN": X_AUTH},
        "no-x-auth",
        "wrong-x-auth",
    ],
)
async def test_mp_calls_need_a_live_bearer_token_and_the_x_auth_token(
    client: TestClient[Any, Any], headers: dict[str, str] | str
) -> None:
    good = await auth(client)
    if headers == "no-x-auth":
        headers = {"Authorization": good["Authorization"]}
    elif headers == "wrong-x-auth":
        headers = {**good, "X-AUTH-TOKEN": "other"}
    assert isinstance(headers, dict)
    assert (await client.post(f"{API}/mp/init", headers=headers)).status == 401
    resp = await client.get(f"{API}/mp/paymentstatus/MP1", headers=headers)
    assert resp.status == 401


async def test_revoked_and_expired_tokens_are_refused(
    client: TestClient[Any, Any], clock: Clock
) -> None:
    headers = await auth(client)
    await client.post("/_sandbox/orange/revoke-tokens")
    assert (await client.post(f"{API}/mp/init", headers=headers)).status == 401
    headers = await auth(client)
    clock.now += 3601
    assert (await client.post(f"{API}/mp/init", headers=headers)).status == 401


# -- init, pay, status -----------------------------------------------------------------------------


async def test_init_pay_and_status_flow(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    assert (await status(client, headers, pay_token))["status"] == "INITIATED"

    resp = await client.post(f"{API}/mp/pay", json=pay_body(pay_token), headers=headers)
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert (data["status"], data["inittxnstatus"], data["payToken"]) == (
        "PENDING",
        "200",
        pay_token,
    )

    settled = await status(client, headers, pay_token)  # settle_seconds=0
    assert (settled["status"], settled["confirmtxnstatus"]) == ("SUCCESSFULL", "200")
    assert settled["txnid"]
    assert settled["orderId"] == pay_body(pay_token)["orderId"]
    counts = sandbox.counts()
    assert counts["initiations"] == {pay_body(pay_token)["orderId"]: 1}
    assert counts["lookups"][pay_token] == 2


async def test_a_pay_token_is_used_once(client: TestClient[Any, Any]) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    first = await client.post(f"{API}/mp/pay", json=pay_body(pay_token), headers=headers)
    second = await client.post(f"{API}/mp/pay", json=pay_body(pay_token), headers=headers)
    assert (first.status, second.status) == (200, 422)
    never_issued = await client.post(f"{API}/mp/pay", json=pay_body("MP0000"), headers=headers)
    assert never_issued.status == 422


async def test_an_unpaid_pay_token_expires(client: TestClient[Any, Any], clock: Clock) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    clock.now += 421
    headers = await auth(client)
    assert (await status(client, headers, pay_token))["status"] == "EXPIRED"
    resp = await client.post(f"{API}/mp/pay", json=pay_body(pay_token), headers=headers)
    assert resp.status == 422


async def test_an_unknown_pay_token_is_404(client: TestClient[Any, Any]) -> None:
    headers = await auth(client)
    resp = await client.get(f"{API}/mp/paymentstatus/MP404", headers=headers)
    assert resp.status == 404


async def test_a_second_init_and_pay_for_one_order_is_a_second_charge(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox
) -> None:
    headers = await auth(client)
    for _ in range(2):
        pay_token = await init(client, headers)
        resp = await client.post(f"{API}/mp/pay", json=pay_body(pay_token), headers=headers)
        assert resp.status == 200
    order_id = pay_body("x")["orderId"]
    counts = await (await client.get("/_sandbox/orange/requests")).json()
    assert counts["initiations"][order_id] == 2
    assert counts["requests"][order_id] == 2
    assert sandbox.initiations[order_id] == 2


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"subscriberMsisdn": "237690000000"}, "nine-digit"),
        ({"channelUserMsisdn": "237699112233"}, "nine-digit"),
        ({"subscriberMsisdn": MERCHANT}, "differ"),
        ({"amount": "5000.5"}, "whole number"),
        ({"amount": 5000}, "amount"),
        ({"pin": ""}, "PIN"),
        ({"pin": "0000"}, "PIN"),
        ({"orderId": ""}, "orderId"),
        ({"notifUrl": None}, "notifUrl"),
    ],
)
async def test_bad_pay_bodies_are_refused(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox, overrides: dict[str, Any], why: str
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    body = pay_body(pay_token, **overrides)
    resp = await client.post(f"{API}/mp/pay", json=body, headers=headers)
    assert resp.status == 400
    assert why in (await resp.json())["message"]
    assert not sandbox.initiations


# -- magic numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("number", "code"), [("690000001", "00671"), ("690000002", "60019")])
async def test_refusals_at_pay_carry_orange_codes_and_charge_nothing(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox, number: str, code: str
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    resp = await client.post(f"{API}/mp/pay", json=pay_body(pay_token, number), headers=headers)
    assert resp.status == 417
    body = await resp.json()
    assert body["message"].startswith(f"{code} :: ")
    assert (body["data"]["status"], body["data"]["inittxnstatus"]) == ("FAILED", code)
    data = await status(client, headers, pay_token)
    assert (data["status"], data["inittxnstatus"]) == ("FAILED", code)
    assert not sandbox.initiations
    again = await client.post(f"{API}/mp/pay", json=pay_body(pay_token, number), headers=headers)
    assert again.status == 422  # the refused pay spent the payToken


@pytest.mark.parametrize(
    ("number", "orange_status", "code"),
    [
        ("690000000", "SUCCESSFULL", "200"),
        ("699999999", "SUCCESSFULL", "200"),
        ("690000003", "CANCELLED", None),
        ("690000004", "EXPIRED", None),
        ("690000005", "FAILED", "60022"),
        ("690000006", "FAILED", "60033"),
        ("690000007", "FAILED", None),
        ("690000009", "FAILED", "60026"),
        ("690000010", "PENDING", None),
    ],
)
async def test_the_payer_number_picks_the_outcome(
    client: TestClient[Any, Any], number: str, orange_status: str, code: str | None
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    resp = await client.post(f"{API}/mp/pay", json=pay_body(pay_token, number), headers=headers)
    assert resp.status == 200
    data = await status(client, headers, pay_token)
    assert (data["status"], data["confirmtxnstatus"]) == (orange_status, code)


async def test_error_once_answers_500_without_spending_the_pay_token(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    body = pay_body(pay_token, "690000020")
    assert (await client.post(f"{API}/mp/pay", json=body, headers=headers)).status == 500
    assert (await status(client, headers, pay_token))["status"] == "INITIATED"
    assert (await client.post(f"{API}/mp/pay", json=body, headers=headers)).status == 200
    assert sandbox.initiations[body["orderId"]] == 1


async def test_error_after_accept_registers_then_answers_500(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    body = pay_body(pay_token, "690000021")
    assert (await client.post(f"{API}/mp/pay", json=body, headers=headers)).status == 500
    assert (await status(client, headers, pay_token))["status"] == "SUCCESSFULL"
    assert sandbox.initiations[body["orderId"]] == 1


async def test_throttle_once_answers_429_with_retry_after(client: TestClient[Any, Any]) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    body = pay_body(pay_token, "690000023")
    first = await client.post(f"{API}/mp/pay", json=body, headers=headers)
    assert (first.status, first.headers["Retry-After"]) == (429, "1")
    assert (await client.post(f"{API}/mp/pay", json=body, headers=headers)).status == 200


async def test_a_held_reply_is_registered_and_answers_when_released(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    body = pay_body(pay_token, "690000030")
    pending = asyncio.ensure_future(client.post(f"{API}/mp/pay", json=body, headers=headers))
    async with asyncio.timeout(5):
        await sandbox.wait_held(1)
    assert sandbox.initiations[body["orderId"]] == 1
    assert not pending.done()
    await client.post("/_sandbox/orange/release")
    async with asyncio.timeout(5):
        assert (await pending).status == 200


# -- notifications -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"), [("690000000", "SUCCESSFULL"), ("690000006", "FAILED")]
)
async def test_settled_payments_are_notified_to_the_notif_url(
    client: TestClient[Any, Any], number: str, expected: str
) -> None:
    received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def notified(request: web.Request) -> web.Response:
        await received.put((request.method, await request.json()))
        return web.Response()

    receiver = web.Application()
    receiver.router.add_route("*", "/notify", notified)
    async with TestClient(TestServer(receiver)) as hook:
        headers = await auth(client)
        pay_token = await init(client, headers)
        body = pay_body(pay_token, number, notifUrl=str(hook.make_url("/notify")))
        assert (await client.post(f"{API}/mp/pay", json=body, headers=headers)).status == 200
        async with asyncio.timeout(5):
            method, notification = await received.get()
    assert method == "POST"
    assert notification["payToken"] == pay_token
    assert notification["orderId"] == body["orderId"]
    assert notification["status"] == expected


async def test_no_notification_without_a_notif_url(
    client: TestClient[Any, Any], sandbox: OrangeMpSandbox
) -> None:
    headers = await auth(client)
    pay_token = await init(client, headers)
    assert (
        await client.post(f"{API}/mp/pay", json=pay_body(pay_token), headers=headers)
    ).status == 200
    assert sandbox.payments[pay_body(pay_token)["orderId"]].callback_url is None


# -- the client against the simulator ------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "status", "reason"),
    [
        ("237690000000", ProviderStatus.COMPLETED, None),
        ("237690000003", ProviderStatus.FAILED, "APPROVAL_REJECTED"),
        ("237690000004", ProviderStatus.FAILED, "EXPIRED"),
        ("237690000005", ProviderStatus.FAILED, "PAYER_LIMIT_REACHED"),
        ("237690000006", ProviderStatus.FAILED, "NOT_ALLOWED"),
        ("237690000010", ProviderStatus.PENDING, None),
    ],
)
async def test_the_client_and_the_simulator_agree(
    client: TestClient[Any, Any], number: str, status: ProviderStatus, reason: str | None
) -> None:
    backend = orange_client(client)
    request = money_request(operator="ORANGE", msisdn=number)
    request = replace(request, handle=await backend.prepare(request))
    assert (await backend.send(request)).result is SendResult.ACCEPTED
    lookup = await backend.lookup(request)
    assert (lookup.status, lookup.reason) == (status, reason)


@pytest.mark.parametrize(
    ("number", "reason"),
    [("237690000001", "PAYER_NOT_FOUND"), ("237690000002", "NOT_ENOUGH_FUNDS")],
)
async def test_the_simulators_refusals_reach_the_client_as_reasons(
    client: TestClient[Any, Any], number: str, reason: str
) -> None:
    backend = orange_client(client)
    request = money_request(operator="ORANGE", msisdn=number)
    request = replace(request, handle=await backend.prepare(request))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(request)
    assert caught.value.provider_code == reason
    assert (await backend.lookup(request)).reason == reason


def orange_client(client: TestClient[Any, Any]) -> OrangeMpClient:
    return OrangeMpClient(
        OrangeMpSettings(
            base_url=str(client.make_url("")).rstrip("/"),
            client_id="client-id",
            client_secret="client-secret",  # type: ignore[arg-type]
            x_auth_token=X_AUTH,  # type: ignore[arg-type]
            channel_user_msisdn="237" + MERCHANT,
            pin=PIN,  # type: ignore[arg-type]
        ),
        client.session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
    )
