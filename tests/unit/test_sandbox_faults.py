"""The sandbox's injected faults: each one does what it says, and none of them lies about money."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kunpay_worker.sandbox import SandboxConfig, build_app
from kunpay_worker.sandbox.app import FAULTS_KEY, MTN_KEY
from kunpay_worker.sandbox.faults import Faults
from tests.unit.test_sandbox import rtp_body, token

RTP = "/collection/v1_0/requesttopay"


async def sandbox(faults: Faults, **config: Any) -> TestClient[Any, Any]:
    app = build_app(SandboxConfig(settle_seconds=0, slow_seconds=0, **config), faults)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def clients() -> AsyncIterator[list[TestClient[Any, Any]]]:
    made: list[TestClient[Any, Any]] = []
    yield made
    for client in made:
        await client.close()


async def request_to_pay(client: TestClient[Any, Any], reference: str) -> int:
    headers = {**await token(client), "X-Reference-Id": reference}
    resp = await client.post(RTP, json=rtp_body(), headers=headers)
    await resp.read()
    return resp.status


async def test_an_error_before_the_handler_registers_nothing(
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await sandbox(Faults(error_rate=1))
    clients.append(client)
    reference = str(uuid.uuid4())
    assert await request_to_pay(client, reference) == 503
    mtn = client.app[MTN_KEY]
    assert mtn.initiations[reference] == 0
    assert client.app[FAULTS_KEY].injected["error_5xx"] == 1


async def test_a_duplicate_answer_registers_once_and_answers_409(
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await sandbox(Faults(duplicate_answer_rate=1))
    clients.append(client)
    reference = str(uuid.uuid4())
    assert await request_to_pay(client, reference) == 409
    assert client.app[MTN_KEY].initiations[reference] == 1


async def test_malformed_json_keeps_what_the_handler_registered(
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await sandbox(Faults(malformed_rate=1))
    clients.append(client)
    reference = str(uuid.uuid4())
    headers = {**await token(client), "X-Reference-Id": reference}
    resp = await client.post(RTP, json=rtp_body(), headers=headers)
    with pytest.raises(json.JSONDecodeError):
        json.loads(await resp.read())
    assert client.app[MTN_KEY].initiations[reference] == 1


async def test_a_lost_answer_comes_after_the_client_gave_up_but_the_payment_exists(
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await sandbox(Faults(lost_answer_rate=1, lost_answer_seconds=30))
    clients.append(client)
    reference = str(uuid.uuid4())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await request_to_pay(client, reference)
    assert client.app[MTN_KEY].initiations[reference] == 1


async def test_faults_are_set_over_http_and_bad_settings_are_refused(
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await sandbox(Faults())
    clients.append(client)
    ok = await client.post("/_sandbox/faults", json={"error_rate": 0.5, "seed": 7})
    assert ok.status == 200
    assert (await ok.json())["error_rate"] == 0.5
    for bad in ({"error_rate": 2}, {"nonsense": 1}, [1, 2], {"latency": -1}):
        resp = await client.post("/_sandbox/faults", json=bad)
        assert resp.status == 400, bad
    assert (await (await client.get("/_sandbox/faults")).json())["error_rate"] == 0.5


async def test_the_same_seed_injects_the_same_faults() -> None:
    def draws(seed: int) -> list[bool]:
        faults = Faults(error_rate=0.5, seed=seed)
        return [faults.hit(faults.error_rate, "x") for _ in range(50)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


async def test_callbacks_are_sent_as_many_times_as_asked(
    clients: list[TestClient[Any, Any]],
) -> None:
    received: list[str] = []
    done = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        received.append(request.query["reference"])
        if len(received) == 3:
            done.set()
        return web.Response()

    receiver = web.Application()
    receiver.router.add_route("*", "/cb", receive)
    target: TestClient[Any, Any] = TestClient(TestServer(receiver))
    await target.start_server()
    clients.append(target)
    client = await sandbox(Faults(callback_copies=3, callback_jitter=0.05))
    clients.append(client)
    reference = str(uuid.uuid4())
    headers = {
        **await token(client),
        "X-Reference-Id": reference,
        "X-Callback-Url": str(target.make_url(f"/cb?reference={reference}")),
    }
    resp = await client.post(RTP, json=rtp_body(), headers=headers)
    assert resp.status == 202
    async with asyncio.timeout(5):
        await done.wait()
    assert received == [reference] * 3
    assert client.app[MTN_KEY].initiations[reference] == 1


async def test_latency_delays_provider_answers_not_the_control_routes(
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await sandbox(Faults(), latency_seconds=30)
    clients.append(client)
    assert client.app[FAULTS_KEY].latency == 30
    async with asyncio.timeout(5):
        assert (await client.get("/_sandbox/health")).status == 200
        await token(client)  # tokens are spared too
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await request_to_pay(client, str(uuid.uuid4()))
