"""The Flutterwave simulator is strict where Flutterwave is strict, does not de-duplicate, and
signs its webhooks; kunpay's Flutterwave client works against it."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.providers.base import MoneyRequest, ProviderStatus, SendResult
from kunpay_worker.providers.flutterwave.client import FlutterwaveClient
from kunpay_worker.providers.flutterwave.transformers import (
    failure_reason,
    webhook_is_authentic,
)
from kunpay_worker.sandbox.common import SandboxConfig
from kunpay_worker.sandbox.flutterwave import FAILURE_TEXTS, FlutterwaveSandbox
from kunpay_worker.sandbox.scenarios import MAGIC_NUMBERS, Behaviour
from kunpay_worker.settings import FlutterwaveSettings

SECRET = "FLWSECK_TEST-0123456789abcdef-X"
AUTH = {"Authorization": f"Bearer {SECRET}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sandbox:
    client: TestClient[Any, Any]
    sim: FlutterwaveSandbox
    clock: Clock


def sandbox_app(config: SandboxConfig, clock: Clock) -> tuple[web.Application, FlutterwaveSandbox]:
    sim = FlutterwaveSandbox(config, clock=clock)
    app = web.Application()
    app.add_routes(sim.routes())

    async def close(_app: web.Application) -> None:
        await sim.close()

    app.on_cleanup.append(close)
    return app, sim


async def start(config: SandboxConfig) -> AsyncIterator[Sandbox]:
    clock = Clock()
    app, sim = sandbox_app(config, clock)
    async with TestClient(TestServer(app)) as client:
        yield Sandbox(client, sim, clock)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async for started in start(SandboxConfig(settle_seconds=0, slow_seconds=0, late_seconds=5)):
        yield started


def charge_body(number: str = "237670000000", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tx_ref": str(uuid.uuid4()),
        "amount": "5000",
        "currency": "XAF",
        "country": "CM",
        "email": "payments@kunpay.test",
        "phone_number": number,
        "network": "MTN",
    }
    body.update(overrides)
    return body


async def charge(
    client: TestClient[Any, Any], body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        "/v3/charges?type=mobile_money_franco",
        json=body,
        headers=AUTH if headers is None else headers,
    )
    return resp.status, await resp.json()


async def get(client: TestClient[Any, Any], path: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get(path, headers=AUTH)
    return resp.status, await resp.json()


async def refund(
    client: TestClient[Any, Any], charge_id: int, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"/v3/transactions/{charge_id}/refund", json=body or {}, headers=AUTH)
    return resp.status, await resp.json()


async def counts(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/_sandbox/flutterwave/requests")
    return dict(await resp.json())


# -- auth and validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": SECRET}],
    ids=["none", "not-a-secret-key", "not-bearer"],
)
async def test_every_call_needs_the_secret_key(sandbox: Sandbox, headers: dict[str, str]) -> None:
    client = sandbox.client
    status, body = await charge(client, charge_body(), headers)
    assert (status, body["status"]) == (401, "error")
    for method, path in [
        ("GET", "/v3/transactions/1/verify"),
        ("GET", "/v3/transactions/verify_by_reference?tx_ref=x"),
        ("POST", "/v3/transactions/1/refund"),
        ("GET", "/v3/refunds/1"),
    ]:
        resp = await client.request(method, path, headers=headers)
        assert resp.status == 401, path
    assert not sandbox.sim.initiations


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"email": None}, "email is required"),
        ({"email": "not-an-email"}, "Invalid email"),
        ({"phone_number": "+237670000000"}, "Invalid phone number"),
        ({"phone_number": "67000"}, "Invalid phone number"),
        ({"amount": "5000.5"}, "Invalid amount"),
        ({"amount": "abc"}, "Invalid amount"),
        ({"amount": 0}, "Invalid amount"),
        ({"amount": True}, "Invalid amount"),
        ({"currency": "USD"}, "Invalid currency"),
        ({"currency": "XOF"}, "Invalid currency"),
        ({"country": "NG"}, "Invalid country"),
        ({"network": "AIRTEL"}, "Invalid network"),
        ({"tx_ref": ""}, "tx_ref is required"),
    ],
)
async def test_bad_charges_are_error_answers_with_400(
    sandbox: Sandbox, overrides: dict[str, Any], message: str
) -> None:
    status, body = await charge(sandbox.client, charge_body(**overrides))
    assert status == 400
    assert body["status"] == "error"
    assert message in body["message"]
    assert not sandbox.sim.initiations


async def test_numeric_amounts_and_a_missing_network_are_accepted(sandbox: Sandbox) -> None:
    body = charge_body(amount=5000)
    del body["network"]
    status, answer = await charge(sandbox.client, body)
    assert (status, answer["status"], answer["data"]["amount"]) == (200, "success", 5000)


async def test_only_the_francophone_charge_type_is_served(sandbox: Sandbox) -> None:
    resp = await sandbox.client.post("/v3/charges?type=card", json=charge_body(), headers=AUTH)
    assert resp.status == 400


# -- no de-duplication -----------------------------------------------------------------------


async def test_a_reused_tx_ref_is_a_second_charge(sandbox: Sandbox) -> None:
    body = charge_body()
    first_status, first = await charge(sandbox.client, body)
    second_status, second = await charge(sandbox.client, body)
    assert (first_status, second_status) == (200, 200)
    assert first["data"]["id"] != second["data"]["id"]
    assert first["data"]["tx_ref"] == second["data"]["tx_ref"] == body["tx_ref"]
    seen = await counts(sandbox.client)
    assert seen["requests"][body["tx_ref"]] == 2
    assert seen["initiations"][body["tx_ref"]] == 2
    assert sandbox.sim.initiations[body["tx_ref"]] == 2


# -- outcomes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "status", "text"),
    [
        ("237670000000", "successful", "Approved Or Completed Successfully"),
        ("237654123456", "successful", "Approved Or Completed Successfully"),
        ("237670000002", "failed", "Insufficient funds"),
        ("237690000001", "failed", "Subscriber not found"),
        ("237670000004", "failed", "Transaction timed out"),
        ("237670000010", "pending", "Transaction in progress"),
    ],
)
async def test_the_phone_number_picks_the_outcome(
    sandbox: Sandbox, number: str, status: str, text: str
) -> None:
    body = charge_body(number, network="ORANGE" if number.startswith("23769") else "MTN")
    code, created = await charge(sandbox.client, body)
    assert code == 200
    assert created["message"] == "Charge initiated"
    charge_id = created["data"]["id"]
    for path in (
        f"/v3/transactions/{charge_id}/verify",
        f"/v3/transactions/verify_by_reference?tx_ref={body['tx_ref']}",
    ):
        code, answer = await get(sandbox.client, path)
        assert (code, answer["status"]) == (200, "success")
        data = answer["data"]
        assert (data["status"], data["processor_response"]) == (status, text)
        assert (data["id"], data["tx_ref"], data["amount"], data["currency"]) == (
            charge_id,
            body["tx_ref"],
            5000,
            "XAF",
        )
    assert sandbox.sim.lookups[body["tx_ref"]] == 2


async def test_a_charge_is_pending_until_it_settles() -> None:
    async for sandbox in start(SandboxConfig(settle_seconds=10)):
        _code, created = await charge(sandbox.client, charge_body())
        path = f"/v3/transactions/{created['data']['id']}/verify"
        assert created["data"]["status"] == "pending"
        assert (await get(sandbox.client, path))[1]["data"]["status"] == "pending"
        sandbox.clock.now += 10
        assert (await get(sandbox.client, path))[1]["data"]["status"] == "successful"


async def test_a_late_success_fails_first_then_succeeds(sandbox: Sandbox) -> None:
    _code, created = await charge(sandbox.client, charge_body("237670000011"))
    path = f"/v3/transactions/{created['data']['id']}/verify"
    data = (await get(sandbox.client, path))[1]["data"]
    assert (data["status"], data["processor_response"]) == ("failed", "Transaction timed out")
    sandbox.clock.now += 5
    assert (await get(sandbox.client, path))[1]["data"]["status"] == "successful"


@pytest.mark.parametrize(
    "path",
    ["/v3/transactions/123/verify", "/v3/transactions/verify_by_reference?tx_ref=unknown"],
)
async def test_an_unknown_charge_is_not_found(sandbox: Sandbox, path: str) -> None:
    code, body = await get(sandbox.client, path)
    assert (code, body["status"]) == (400, "error")
    assert body["message"] == "No transaction was found for this id"


async def test_error_once_fails_first_then_charges_the_resend(sandbox: Sandbox) -> None:
    body = charge_body("237670000020")
    assert (await charge(sandbox.client, body))[0] == 500
    by_ref = f"/v3/transactions/verify_by_reference?tx_ref={body['tx_ref']}"
    assert (await get(sandbox.client, by_ref))[0] == 400
    assert (await charge(sandbox.client, body))[0] == 200
    assert sandbox.sim.initiations[body["tx_ref"]] == 1


async def test_throttle_once_answers_429_with_retry_after(sandbox: Sandbox) -> None:
    body = charge_body("237670000023")
    resp = await sandbox.client.post(
        "/v3/charges?type=mobile_money_franco", json=body, headers=AUTH
    )
    assert (resp.status, resp.headers["Retry-After"]) == (429, "1")
    assert not sandbox.sim.initiations
    assert (await charge(sandbox.client, body))[0] == 200


async def test_an_error_after_accepting_still_charges(sandbox: Sandbox) -> None:
    body = charge_body("237670000021")
    assert (await charge(sandbox.client, body))[0] == 500
    assert sandbox.sim.initiations[body["tx_ref"]] == 1
    by_ref = f"/v3/transactions/verify_by_reference?tx_ref={body['tx_ref']}"
    assert (await get(sandbox.client, by_ref))[1]["data"]["status"] == "successful"


async def test_error_always_never_charges(sandbox: Sandbox) -> None:
    body = charge_body("237670000022")
    assert (await charge(sandbox.client, body))[0] == 500
    assert (await charge(sandbox.client, body))[0] == 500
    assert not sandbox.sim.initiations


async def test_a_held_reply_is_charged_and_answers_when_released(sandbox: Sandbox) -> None:
    body = charge_body("237670000030")
    pending = asyncio.ensure_future(charge(sandbox.client, body))
    async with asyncio.timeout(5):
        await sandbox.sim.wait_held(1)
    assert sandbox.sim.initiations[body["tx_ref"]] == 1
    assert not pending.done()
    resp = await sandbox.client.post("/_sandbox/flutterwave/release")
    assert (await resp.json()) == {"released": 1}
    async with asyncio.timeout(5):
        assert (await pending)[0] == 200


async def test_a_slow_reply_is_charged_before_it_answers(sandbox: Sandbox) -> None:
    body = charge_body("237670000031")
    assert (await charge(sandbox.client, body))[0] == 200
    assert sandbox.sim.initiations[body["tx_ref"]] == 1


def test_every_generic_failure_text_maps_back_to_its_name() -> None:
    failures = {
        scenario.failure
        for scenario in MAGIC_NUMBERS.values()
        if scenario.failure is not None
        and scenario.behaviour in (Behaviour.FAIL, Behaviour.LATE_SUCCESS, Behaviour.REFUND_FAILS)
    }
    assert failures <= set(FAILURE_TEXTS)
    for failure in failures:
        assert failure_reason(FAILURE_TEXTS[failure], "failed") == failure


# -- refunds ---------------------------------------------------------------------------------


async def paid(sandbox: Sandbox, number: str = "237670000000") -> int:
    code, created = await charge(sandbox.client, charge_body(number))
    assert code == 200
    return int(created["data"]["id"])


async def test_partial_refunds_until_nothing_is_left(sandbox: Sandbox) -> None:
    charge_id = await paid(sandbox)
    code, first = await refund(sandbox.client, charge_id, {"amount": "2000", "comments": "r-1"})
    assert (code, first["status"], first["message"]) == (
        200,
        "success",
        "Transaction refund initiated",
    )
    data = first["data"]
    assert (data["tx_id"], data["amount_refunded"], data["status"]) == (
        charge_id,
        2000,
        "completed",
    )
    assert data["flw_ref"].startswith("URF_")

    code, too_much = await refund(sandbox.client, charge_id, {"amount": 3001, "comments": "r-2"})
    assert (code, too_much["status"]) == (400, "error")
    code, rest = await refund(sandbox.client, charge_id, {"comments": "r-3"})
    assert (code, rest["data"]["amount_refunded"]) == (200, 3000)
    code, nothing = await refund(sandbox.client, charge_id, {"amount": 1, "comments": "r-4"})
    assert code == 400
    assert "fully refunded" in nothing["message"]

    code, looked_up = await get(sandbox.client, f"/v3/refunds/{data['id']}")
    assert (code, looked_up["data"]) == (200, data)
    assert sandbox.sim.initiations["r-1"] == 1
    assert sandbox.sim.requests["r-2"] == 1
    assert "r-2" not in sandbox.sim.initiations


@pytest.mark.parametrize("number", ["237670000002", "237670000010"], ids=["failed", "pending"])
async def test_only_a_successful_charge_can_be_refunded(sandbox: Sandbox, number: str) -> None:
    charge_id = await paid(sandbox, number)
    code, body = await refund(sandbox.client, charge_id, {"amount": 1000})
    assert (code, body["status"]) == (400, "error")


async def test_refunds_of_unknown_charges_and_unknown_refunds_are_not_found(
    sandbox: Sandbox,
) -> None:
    code, body = await refund(sandbox.client, 123, {"amount": 1000})
    assert (code, body["message"]) == (400, "No transaction was found for this id")
    code, body = await get(sandbox.client, "/v3/refunds/123")
    assert (code, body["status"]) == (404, "error")


@pytest.mark.parametrize("amount", ["0", "-5", "10.5", "lots", None])
async def test_bad_refund_amounts_are_refused(sandbox: Sandbox, amount: Any) -> None:
    charge_id = await paid(sandbox)
    code, _body = await refund(sandbox.client, charge_id, {"amount": amount})
    assert code == 400


async def test_refunds_of_a_refund_fails_number_fail_and_release_the_amount(
    sandbox: Sandbox,
) -> None:
    charge_id = await paid(sandbox, "237670000050")
    code, body = await refund(sandbox.client, charge_id, {"amount": 5000, "comments": "a"})
    assert (code, body["data"]["status"]) == (200, "failed")
    # A failed refund took nothing: the whole amount is still refundable.
    code, again = await refund(sandbox.client, charge_id, {"amount": 5000, "comments": "b"})
    assert (code, again["data"]["status"]) == (200, "failed")


# -- webhooks --------------------------------------------------------------------------------


async def test_settled_charges_are_posted_to_the_webhook_with_both_signatures() -> None:
    received: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put((dict(request.headers), await request.read()))
        return web.Response()

    receiver = web.Application()
    receiver.router.add_post("/flutterwave", hook)
    secret = "a-dashboard-secret-hash"
    async with TestClient(TestServer(receiver)) as hook_client:
        config = SandboxConfig(
            settle_seconds=0,
            flutterwave_webhook_url=str(hook_client.make_url("/flutterwave")),
            flutterwave_secret_hash=secret,
        )
        async for sandbox in start(config):
            body = charge_body("237670000002")
            assert (await charge(sandbox.client, body))[0] == 200
            async with asyncio.timeout(5):
                headers, raw = await received.get()
    expected = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    assert headers["flutterwave-signature"] == expected
    assert headers["verif-hash"] == secret
    assert webhook_is_authentic(headers, raw, secret)
    assert not webhook_is_authentic(
        {"flutterwave-signature": expected}, raw + b" ", "a-dashboard-secret-hash"
    )
    assert not webhook_is_authentic({"verif-hash": "guess"}, raw, secret)
    event = json.loads(raw)
    assert event["event"] == "charge.completed"
    data = event["data"]
    assert (data["tx_ref"], data["status"], data["processor_response"]) == (
        body["tx_ref"],
        "failed",
        "Insufficient funds",
    )


# -- kunpay's client against the simulator ---------------------------------------------------


@pytest.fixture
async def client_and_sandbox(
    sandbox: Sandbox,
) -> AsyncIterator[tuple[FlutterwaveClient, Sandbox]]:
    async with aiohttp.ClientSession() as session:
        settings = FlutterwaveSettings(
            base_url=str(sandbox.client.make_url("")).rstrip("/"),
            secret_key=SECRET,
            customer_email="payments@kunpay.test",
        )
        yield (
            FlutterwaveClient(settings, session, timeout=aiohttp.ClientTimeout(total=5, connect=2)),
            sandbox,
        )


def collection(number: str = "237670000000", **overrides: Any) -> MoneyRequest:
    values: dict[str, Any] = {
        "kind": TransactionType.COLLECTION,
        "transaction_id": str(uuid.uuid4()),
        "reference": str(uuid.uuid4()),
        "amount": Decimal("5000"),
        "currency": "XAF",
        "msisdn": number,
        "operator": "ORANGE" if number.startswith("23769") else "MTN",
        "message": "Payment order-42",
    }
    values.update(overrides)
    return MoneyRequest(**values)


async def test_the_client_charges_verifies_and_refunds_through_the_sandbox(
    client_and_sandbox: tuple[FlutterwaveClient, Sandbox],
) -> None:
    backend, sandbox = client_and_sandbox
    request = collection()
    receipt = await backend.send(request)
    assert receipt.result is SendResult.ACCEPTED
    by_reference = await backend.lookup(request)
    assert (by_reference.status, by_reference.handle) == (ProviderStatus.COMPLETED, receipt.handle)
    by_id = await backend.lookup(collection(reference=request.reference, handle=receipt.handle))
    assert by_id.status is ProviderStatus.COMPLETED

    refund_request = MoneyRequest(
        kind=TransactionType.REFUND,
        transaction_id=str(uuid.uuid4()),
        reference=str(uuid.uuid4()),
        amount=Decimal("2000"),
        currency="XAF",
        msisdn=request.msisdn,
        operator="MTN",
        message="Refund order-42",
        original_reference=request.reference,
        original_handle=receipt.handle,
        original_amount=request.amount,
    )
    refunded = await backend.send(refund_request)
    stored = dataclasses.replace(refund_request, handle=refunded.handle)
    lookup = await backend.lookup(stored)
    assert lookup.status is ProviderStatus.COMPLETED
    assert lookup.provider_transaction_id is not None
    assert lookup.provider_transaction_id.startswith("URF_")
    assert sandbox.sim.initiations[refund_request.reference] == 1


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("237670000001", "PAYER_NOT_FOUND"),
        ("237670000002", "NOT_ENOUGH_FUNDS"),
        ("237690000003", "APPROVAL_REJECTED"),
        ("237670000009", "SERVICE_UNAVAILABLE"),
    ],
)
async def test_the_client_reads_the_sandbox_failures_as_their_names(
    client_and_sandbox: tuple[FlutterwaveClient, Sandbox], number: str, reason: str
) -> None:
    backend, _sandbox = client_and_sandbox
    request = collection(number)
    await backend.send(request)
    lookup = await backend.lookup(request)
    assert (lookup.status, lookup.reason) == (ProviderStatus.FAILED, reason)


async def test_a_resent_charge_would_charge_twice_which_is_why_the_engine_never_resends(
    client_and_sandbox: tuple[FlutterwaveClient, Sandbox],
) -> None:
    backend, sandbox = client_and_sandbox
    request = collection()
    first = await backend.send(request)
    second = await backend.send(request)
    assert first.handle != second.handle
    assert sandbox.sim.initiations[request.reference] == 2
    assert backend.dedupes_by_reference is False
