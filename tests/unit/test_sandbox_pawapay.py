"""The PawaPay simulator is strict where PawaPay is strict, de-duplicates by id, refunds only
what is left of a completed deposit, and answers magic numbers with PawaPay failure codes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kunpay_sdk.contracts import TransactionType
from kunpay_sdk.msisdn import Operator, parse_msisdn
from kunpay_worker.providers.base import ProviderStatus, SendResult
from kunpay_worker.providers.errors import ProviderRefused
from kunpay_worker.providers.pawapay.client import PawapayClient
from kunpay_worker.sandbox.common import SandboxConfig
from kunpay_worker.sandbox.pawapay import FAILURE_CODES, PawapaySandbox
from kunpay_worker.sandbox.scenarios import MAGIC_NUMBERS
from kunpay_worker.settings import PawapaySettings
from tests.provider.contract import money_request

TOKEN = "sandbox-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# PawaPay's documented failure codes (v2 failure-code reference and its SDK enums).
PAWAPAY_CODES = {
    "PAYER_NOT_FOUND",
    "RECIPIENT_NOT_FOUND",
    "INSUFFICIENT_BALANCE",
    "PAYMENT_NOT_APPROVED",
    "WALLET_LIMIT_REACHED",
    "UNSPECIFIED_FAILURE",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sandbox_app(sim: PawapaySandbox) -> web.Application:
    app = web.Application()
    app.add_routes(sim.routes())

    async def close(_app: web.Application) -> None:
        await sim.close()

    app.on_cleanup.append(close)
    return app


@pytest.fixture
def sim() -> PawapaySandbox:
    return PawapaySandbox(SandboxConfig(settle_seconds=0, slow_seconds=0), api_token=TOKEN)


@pytest.fixture
async def client(sim: PawapaySandbox) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(sandbox_app(sim))) as test_client:
        yield test_client


def deposit(number: str = "237670000000", **overrides: Any) -> dict[str, Any]:
    orange = parse_msisdn("+" + number).operator is Operator.ORANGE
    provider = "ORANGE_CMR" if orange else "MTN_MOMO_CMR"
    body: dict[str, Any] = {
        "depositId": str(uuid.uuid4()),
        "amount": "5000",
        "currency": "XAF",
        "payer": {"type": "MMO", "accountDetails": {"phoneNumber": number, "provider": provider}},
        "customerMessage": "kunpay payment",
    }
    body.update(overrides)
    return body


def payout(number: str = "237670000000", **overrides: Any) -> dict[str, Any]:
    body = deposit(number)
    body["payoutId"] = body.pop("depositId")
    body["recipient"] = body.pop("payer")
    body.update(overrides)
    return body


def refund(deposit_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "refundId": str(uuid.uuid4()),
        "depositId": deposit_id,
        "amount": "2000",
        "currency": "XAF",
    }
    body.update(overrides)
    return body


async def post(client: TestClient[Any, Any], path: str, body: Any) -> tuple[int, Any]:
    resp = await client.post(path, json=body, headers=AUTH)
    return resp.status, await resp.json()


async def status_of(client: TestClient[Any, Any], path: str) -> Any:
    resp = await client.get(path, headers=AUTH)
    assert resp.status == 200
    return await resp.json()


# -- authentication and ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "NO_AUTHENTICATION"),
        ({"Authorization": "Basic abc"}, 401, "NO_AUTHENTICATION"),
        ({"Authorization": "Bearer "}, 401, "NO_AUTHENTICATION"),
        ({"Authorization": "Bearer wrong"}, 403, "AUTHENTICATION_ERROR"),
    ],
)
async def test_every_call_needs_the_bearer_token(
    client: TestClient[Any, Any],
    sim: PawapaySandbox,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    for method, path, body in (
        ("POST", "/v2/deposits", deposit()),
        ("POST", "/v2/payouts", payout()),
        ("GET", f"/v2/deposits/{uuid.uuid4()}", None),
        ("POST", "/v2/predict-provider", {"phoneNumber": "237670000000"}),
    ):
        resp = await client.request(method, path, json=body, headers=headers)
        assert resp.status == status, path
        assert (await resp.json())["failureReason"]["failureCode"] == code
    assert not sim.initiations


async def test_any_bearer_token_is_accepted_when_none_is_configured() -> None:
    sim = PawapaySandbox(SandboxConfig(settle_seconds=0))
    async with TestClient(TestServer(sandbox_app(sim))) as client:
        resp = await client.post(
            "/v2/deposits", json=deposit(), headers={"Authorization": "Bearer anything"}
        )
        assert (await resp.json())["status"] == "ACCEPTED"


@pytest.mark.parametrize(
    "ident",
    ["not-a-uuid", str(uuid.uuid1()), str(uuid.uuid5(uuid.NAMESPACE_DNS, "x")), "", 42],
)
@pytest.mark.parametrize(
    ("path", "make", "field"),
    [("/v2/deposits", deposit, "depositId"), ("/v2/payouts", payout, "payoutId")],
)
async def test_an_id_that_is_not_a_uuid4_is_refused(
    client: TestClient[Any, Any],
    sim: PawapaySandbox,
    ident: Any,
    path: str,
    make: Any,
    field: str,
) -> None:
    status, body = await post(client, path, make(**{field: ident}))
    assert status == 400
    assert body["status"] == "REJECTED"
    assert body["failureReason"]["failureCode"] == "INVALID_PARAMETER"
    assert not sim.initiations


async def test_a_refund_id_that_is_not_a_uuid4_is_refused(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    _, accepted = await post(client, "/v2/deposits", deposit())
    status, body = await post(client, "/v2/refunds", refund(accepted["depositId"], refundId="r-1"))
    assert (status, body["failureReason"]["failureCode"]) == (400, "INVALID_PARAMETER")
    assert set(sim.initiations) == {accepted["depositId"]}


async def test_a_reused_id_is_duplicate_ignored_and_initiated_once(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    body = deposit()
    first = await post(client, "/v2/deposits", body)
    # Even with another amount: the first request with an id stands.
    second = await post(client, "/v2/deposits", {**body, "amount": "9000"})
    assert (first[0], first[1]["status"]) == (200, "ACCEPTED")
    assert (second[0], second[1]["status"]) == (200, "DUPLICATE_IGNORED")
    assert second[1]["depositId"] == body["depositId"]
    assert sim.initiations[body["depositId"]] == 1
    assert sim.requests[body["depositId"]] == 2
    state = await status_of(client, f"/v2/deposits/{body['depositId']}")
    assert state["data"]["amount"] == "5000"
    counts = await (await client.get("/_sandbox/pawapay/requests")).json()
    assert counts["initiations"] == {body["depositId"]: 1}
    assert counts["requests"] == {body["depositId"]: 2}
    assert counts["lookups"] == {body["depositId"]: 1}


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (deposit(amount="5."), 400, "INVALID_PARAMETER"),
        (deposit(amount=".5"), 400, "INVALID_PARAMETER"),
        (deposit(amount="00.5"), 400, "INVALID_PARAMETER"),
        (deposit(amount="5.50"), 400, "INVALID_PARAMETER"),
        (deposit(amount="-5"), 400, "INVALID_PARAMETER"),
        (deposit(amount=5000), 400, "INVALID_PARAMETER"),
        (deposit(amount="5.5"), 200, "INVALID_AMOUNT"),  # XAF has no decimals
        (deposit(amount="5.555"), 200, "INVALID_AMOUNT"),
        (deposit(amount="0"), 200, "AMOUNT_OUT_OF_BOUNDS"),
        (deposit(amount="5000001"), 200, "AMOUNT_OUT_OF_BOUNDS"),
        (deposit(currency="EUR"), 200, "INVALID_CURRENCY"),
        (deposit(correspondent="MTN_MOMO_CMR"), 400, "UNSUPPORTED_PARAMETER"),
        ({k: v for k, v in deposit().items() if k != "payer"}, 400, "MISSING_PARAMETER"),
        ({k: v for k, v in deposit().items() if k != "amount"}, 400, "MISSING_PARAMETER"),
        (deposit(customerMessage="abc"), 400, "INVALID_PARAMETER"),
        (deposit(customerMessage="x" * 23), 400, "INVALID_PARAMETER"),
        (
            deposit(payer={"type": "MSISDN", "address": {"value": "237670000000"}}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            deposit(
                payer={
                    "type": "MMO",
                    "accountDetails": {"phoneNumber": "237670000000", "provider": "MTN_MOMO_ZMB"},
                }
            ),
            200,
            "INVALID_PROVIDER",
        ),
        (
            deposit(
                payer={
                    "type": "MMO",
                    "accountDetails": {"phoneNumber": "237690000000", "provider": "MTN_MOMO_CMR"},
                }
            ),
            200,
            "INVALID_PHONE_NUMBER",
        ),
        (
            deposit(
                payer={
                    "type": "MMO",
                    "accountDetails": {"phoneNumber": "+237670000000", "provider": "MTN_MOMO_CMR"},
                }
            ),
            200,
            "INVALID_PHONE_NUMBER",
        ),
    ],
)
async def test_bad_deposits_are_refused_like_pawapay_does(
    client: TestClient[Any, Any], sim: PawapaySandbox, body: dict[str, Any], status: int, code: str
) -> None:
    answer_status, answer = await post(client, "/v2/deposits", body)
    assert answer_status == status
    assert answer["status"] == "REJECTED"
    assert answer["failureReason"]["failureCode"] == code
    assert answer["depositId"] == body["depositId"]
    assert not sim.initiations


@pytest.mark.parametrize("amount", ["5", "5000", "100000"])
async def test_well_formed_amounts_are_accepted(client: TestClient[Any, Any], amount: str) -> None:
    status, body = await post(client, "/v2/deposits", deposit(amount=amount))
    assert (status, body["status"]) == (200, "ACCEPTED")


async def test_a_body_that_is_not_json_is_invalid_input(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v2/deposits", data=b"not json", headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["failureReason"]["failureCode"] == "INVALID_INPUT"


async def test_a_content_digest_must_match_the_body(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    raw = json.dumps(deposit()).encode()
    good = base64.b64encode(hashlib.sha512(raw).digest()).decode()
    bad = base64.b64encode(hashlib.sha512(raw + b" ").digest()).decode()
    headers = {**AUTH, "Content-Type": "application/json"}
    resp = await client.post(
        "/v2/deposits", data=raw, headers={**headers, "Content-Digest": f"sha-512=:{bad}:"}
    )
    assert resp.status == 403
    assert (await resp.json())["failureReason"]["failureCode"] == "HTTP_SIGNATURE_ERROR"
    assert not sim.initiations
    resp = await client.post(
        "/v2/deposits", data=raw, headers={**headers, "Content-Digest": f"sha-512=:{good}:"}
    )
    assert (await resp.json())["status"] == "ACCEPTED"


# -- outcomes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "make", "number", "status", "code"),
    [
        ("/v2/deposits", deposit, "237670000000", "COMPLETED", None),
        ("/v2/deposits", deposit, "237699999999", "COMPLETED", None),
        ("/v2/deposits", deposit, "237670000001", "FAILED", "PAYER_NOT_FOUND"),
        ("/v2/deposits", deposit, "237670000002", "FAILED", "INSUFFICIENT_BALANCE"),
        ("/v2/deposits", deposit, "237690000002", "FAILED", "INSUFFICIENT_BALANCE"),
        ("/v2/deposits", deposit, "237670000003", "FAILED", "PAYMENT_NOT_APPROVED"),
        ("/v2/deposits", deposit, "237670000004", "FAILED", "PAYMENT_NOT_APPROVED"),
        ("/v2/deposits", deposit, "237670000005", "FAILED", "WALLET_LIMIT_REACHED"),
        ("/v2/deposits", deposit, "237670000007", "FAILED", "UNSPECIFIED_FAILURE"),
        ("/v2/deposits", deposit, "237670000010", "PROCESSING", None),
        ("/v2/payouts", payout, "237670000000", "COMPLETED", None),
        ("/v2/payouts", payout, "237670000001", "FAILED", "RECIPIENT_NOT_FOUND"),
        ("/v2/payouts", payout, "237690000010", "PROCESSING", None),
    ],
)
async def test_the_number_picks_the_outcome_and_its_failure_code(
    client: TestClient[Any, Any],
    path: str,
    make: Any,
    number: str,
    status: str,
    code: str | None,
) -> None:
    body = make(number)
    field = "depositId" if path == "/v2/deposits" else "payoutId"
    assert (await post(client, path, body))[1]["status"] == "ACCEPTED"
    state = await status_of(client, f"{path}/{body[field]}")
    assert state["status"] == "FOUND"
    data = state["data"]
    assert data[field] == body[field]
    assert data["status"] == status
    assert data.get("failureReason", {}).get("failureCode") == code
    assert ("providerTransactionId" in data) is (status == "COMPLETED")
    party = "payer" if path == "/v2/deposits" else "recipient"
    assert data[party]["accountDetails"]["phoneNumber"] == number
    assert (data["amount"], data["currency"], data["country"]) == ("5000", "XAF", "CMR")


def test_every_generic_failure_has_a_pawapay_failure_code() -> None:
    generic = {s.failure for s in MAGIC_NUMBERS.values() if s.failure} | {"PAYEE_NOT_FOUND"}
    assert generic <= set(FAILURE_CODES)
    assert set(FAILURE_CODES.values()) <= PAWAPAY_CODES


async def test_a_movement_is_accepted_until_it_settles() -> None:
    clock = Clock()
    sim = PawapaySandbox(SandboxConfig(settle_seconds=30), api_token=TOKEN, clock=clock)
    async with TestClient(TestServer(sandbox_app(sim))) as client:
        body = deposit()
        await post(client, "/v2/deposits", body)
        path = f"/v2/deposits/{body['depositId']}"
        assert (await status_of(client, path))["data"]["status"] == "ACCEPTED"
        clock.now += 30
        assert (await status_of(client, path))["data"]["status"] == "COMPLETED"


@pytest.mark.parametrize("path", ["/v2/deposits", "/v2/payouts", "/v2/refunds"])
async def test_an_unknown_id_is_not_found(client: TestClient[Any, Any], path: str) -> None:
    assert await status_of(client, f"{path}/{uuid.uuid4()}") == {"status": "NOT_FOUND"}


async def test_a_deposit_is_not_found_among_payouts(client: TestClient[Any, Any]) -> None:
    body = deposit()
    await post(client, "/v2/deposits", body)
    assert (await status_of(client, f"/v2/payouts/{body['depositId']}"))["status"] == "NOT_FOUND"


async def test_a_status_check_of_a_non_uuid_is_invalid(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v2/deposits/not-a-uuid", headers=AUTH)
    assert resp.status == 400


async def test_error_once_fails_first_then_accepts_the_resend(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    body = deposit("237670000020")
    assert (await post(client, "/v2/deposits", body))[0] == 500
    state = await status_of(client, f"/v2/deposits/{body['depositId']}")
    assert state["status"] == "NOT_FOUND"
    assert (await post(client, "/v2/deposits", body))[1]["status"] == "ACCEPTED"
    assert sim.initiations[body["depositId"]] == 1


async def test_error_after_accept_registers_the_movement(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    body = deposit("237670000021")
    assert (await post(client, "/v2/deposits", body))[0] == 500
    assert sim.initiations[body["depositId"]] == 1
    again = await post(client, "/v2/deposits", body)
    assert again[1]["status"] == "DUPLICATE_IGNORED"


async def test_throttle_once_answers_429_with_retry_after(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    body = deposit("237670000023")
    resp = await client.post("/v2/deposits", json=body, headers=AUTH)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert not sim.initiations
    assert (await post(client, "/v2/deposits", body))[1]["status"] == "ACCEPTED"


async def test_a_held_reply_is_registered_and_answers_when_released(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    body = deposit("237670000030")
    pending = asyncio.ensure_future(client.post("/v2/deposits", json=body, headers=AUTH))
    async with asyncio.timeout(5):
        await sim.wait_held(1)
    assert body["depositId"] in sim.payments
    assert not pending.done()
    released = await (await client.post("/_sandbox/pawapay/release")).json()
    assert released == {"released": 1}
    async with asyncio.timeout(5):
        resp = await pending
    assert (await resp.json())["status"] == "ACCEPTED"


# -- refunds ---------------------------------------------------------------------------------


async def completed_deposit(client: TestClient[Any, Any], number: str = "237670000000") -> str:
    body = deposit(number)
    assert (await post(client, "/v2/deposits", body))[1]["status"] == "ACCEPTED"
    return str(body["depositId"])


async def test_refunds_take_what_is_left_and_no_more(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    deposit_id = await completed_deposit(client)
    first = refund(deposit_id, amount="2000")
    assert (await post(client, "/v2/refunds", first))[1]["status"] == "ACCEPTED"
    too_much = await post(client, "/v2/refunds", refund(deposit_id, amount="3001"))
    assert too_much[0] == 200
    assert too_much[1]["status"] == "REJECTED"
    assert too_much[1]["failureReason"]["failureCode"] == "AMOUNT_TOO_LARGE"
    rest = refund(deposit_id)
    del rest["amount"]
    assert (await post(client, "/v2/refunds", rest))[1]["status"] == "ACCEPTED"
    data = (await status_of(client, f"/v2/refunds/{rest['refundId']}"))["data"]
    assert (data["status"], data["amount"], data["depositId"]) == ("COMPLETED", "3000", deposit_id)
    assert data["recipient"]["accountDetails"]["phoneNumber"] == "237670000000"
    done = await post(client, "/v2/refunds", refund(deposit_id, amount="1"))
    assert done[1]["failureReason"]["failureCode"] == "DEPOSIT_ALREADY_REFUNDED"
    assert sim.refunded(deposit_id) == Decimal(5000)
    assert len(sim.initiations) == 3


@pytest.mark.parametrize("number", ["237670000002", "237670000010"])
async def test_only_a_completed_deposit_can_be_refunded(
    client: TestClient[Any, Any], number: str
) -> None:
    deposit_id = await completed_deposit(client, number)
    status, body = await post(client, "/v2/refunds", refund(deposit_id))
    assert (status, body["failureReason"]["failureCode"]) == (400, "INVALID_PARAMETER")


async def test_a_refund_of_an_unknown_deposit_or_a_payout_is_refused(
    client: TestClient[Any, Any],
) -> None:
    assert (await post(client, "/v2/refunds", refund(str(uuid.uuid4()))))[0] == 400
    body = payout()
    await post(client, "/v2/payouts", body)
    assert (await post(client, "/v2/refunds", refund(body["payoutId"])))[0] == 400


async def test_a_refund_in_another_currency_is_refused(client: TestClient[Any, Any]) -> None:
    deposit_id = await completed_deposit(client)
    _, body = await post(client, "/v2/refunds", refund(deposit_id, currency="EUR"))
    assert body["failureReason"]["failureCode"] == "INVALID_CURRENCY"


async def test_a_failed_refund_frees_its_amount(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    deposit_id = await completed_deposit(client, "237670000050")  # refunds of it fail
    body = refund(deposit_id, amount="5000")
    assert (await post(client, "/v2/refunds", body))[1]["status"] == "ACCEPTED"
    data = (await status_of(client, f"/v2/refunds/{body['refundId']}"))["data"]
    assert data["status"] == "FAILED"
    assert data["failureReason"]["failureCode"] == "UNSPECIFIED_FAILURE"
    assert sim.refunded(deposit_id) == 0
    again = await post(client, "/v2/refunds", refund(deposit_id, amount="5000"))
    assert again[1]["status"] == "ACCEPTED"


# -- predict provider ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "provider", "digits"),
    [
        ("+237 670-000-000", "MTN_MOMO_CMR", "237670000000"),
        ("237650000000", "MTN_MOMO_CMR", "237650000000"),
        ("237690000000", "ORANGE_CMR", "237690000000"),
        ("237655000000", "ORANGE_CMR", "237655000000"),
    ],
)
async def test_predict_provider_sanitises_and_names_the_provider(
    client: TestClient[Any, Any], given: str, provider: str, digits: str
) -> None:
    status, body = await post(client, "/v2/predict-provider", {"phoneNumber": given})
    assert status == 200
    assert body == {"country": "CMR", "provider": provider, "phoneNumber": digits}


@pytest.mark.parametrize("given", ["237660000000", "237620000000", "123", "", "2250700000000"])
async def test_predict_provider_refuses_numbers_no_provider_serves(
    client: TestClient[Any, Any], given: str
) -> None:
    status, body = await post(client, "/v2/predict-provider", {"phoneNumber": given})
    assert status == 400
    assert body["failureReason"]["failureCode"] == "INVALID_PHONE_NUMBER"


# -- callbacks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "make", "field", "number", "status", "code"),
    [
        ("/v2/deposits", deposit, "depositId", "237670000002", "FAILED", "INSUFFICIENT_BALANCE"),
        ("/v2/payouts", payout, "payoutId", "237690000000", "COMPLETED", None),
    ],
)
async def test_settled_movements_are_posted_to_the_callback_url(
    path: str, make: Any, field: str, number: str, status: str, code: str | None
) -> None:
    received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def callback(request: web.Request) -> web.Response:
        await received.put((request.method, await request.json()))
        return web.Response()

    receiver = web.Application()
    receiver.router.add_route("*", "/pawapay", callback)
    async with TestClient(TestServer(receiver)) as hook:
        config = SandboxConfig(
            settle_seconds=0, pawapay_callback_url=str(hook.make_url("/pawapay"))
        )
        sim = PawapaySandbox(config, api_token=TOKEN)
        async with TestClient(TestServer(sandbox_app(sim))) as client:
            body = make(number)
            assert (await post(client, path, body))[1]["status"] == "ACCEPTED"
            async with asyncio.timeout(5):
                verb, data = await received.get()
            expected = await status_of(client, f"{path}/{body[field]}")
    assert verb == "POST"
    assert data == expected["data"]
    assert data[field] == body[field]
    assert data["status"] == status
    assert data.get("failureReason", {}).get("failureCode") == code


# -- the client against the simulator ---------------------------------------------------------


async def test_the_pawapay_client_works_against_the_simulator(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    settings = PawapaySettings(
        base_url=str(client.make_url("")),
        api_token=TOKEN,  # type: ignore[arg-type]
    )
    async with aiohttp.ClientSession() as session:
        backend = PawapayClient(
            settings, session, timeout=aiohttp.ClientTimeout(total=5, connect=2)
        )
        collect = money_request(TransactionType.COLLECTION)
        assert (await backend.send(collect)).result is SendResult.ACCEPTED
        assert (await backend.send(collect)).result is SendResult.DUPLICATE
        assert sim.initiations[collect.reference] == 1
        lookup = await backend.lookup(collect)
        assert (lookup.status, lookup.provider_status) == (ProviderStatus.COMPLETED, "COMPLETED")
        assert lookup.provider_transaction_id is not None

        partial = money_request(
            TransactionType.REFUND,
            amount=Decimal("2000"),
            original_reference=collect.reference,
        )
        assert (await backend.send(partial)).result is SendResult.ACCEPTED
        assert (await backend.lookup(partial)).status is ProviderStatus.COMPLETED
        too_much = money_request(
            TransactionType.REFUND,
            amount=Decimal("3001"),
            original_reference=collect.reference,
        )
        with pytest.raises(ProviderRefused) as caught:
            await backend.send(too_much)
        assert caught.value.provider_code == "AMOUNT_TOO_LARGE"

        failing = money_request(
            TransactionType.DISBURSEMENT, msisdn="237690000001", operator="ORANGE"
        )
        assert (await backend.send(failing)).result is SendResult.ACCEPTED
        lookup = await backend.lookup(failing)
        assert (lookup.status, lookup.reason) == (ProviderStatus.FAILED, "RECIPIENT_NOT_FOUND")
        assert not (await backend.lookup(money_request())).found

        holder = await backend.account_holder("237690000000", "ORANGE")
        assert (holder.active, holder.operator) == (None, "ORANGE")


async def test_signed_requests_pass_the_simulators_digest_check(
    client: TestClient[Any, Any], sim: PawapaySandbox
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    settings = PawapaySettings(
        base_url=str(client.make_url("")),
        api_token=TOKEN,  # type: ignore[arg-type]
        signing_key=pem,  # type: ignore[arg-type]
        signing_key_id="KEY-1",
    )
    async with aiohttp.ClientSession() as session:
        backend = PawapayClient(
            settings, session, timeout=aiohttp.ClientTimeout(total=5, connect=2)
        )
        request = money_request()
        assert (await backend.send(request)).result is SendResult.ACCEPTED
    assert sim.initiations[request.reference] == 1
