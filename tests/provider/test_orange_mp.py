"""Orange Money Cameroon "mp" client against aioresponses.

The JSON under tests/fixtures/orange_mp is NOT recorded live: Orange publishes no reference for
this API, so the answers are shaped after what open-source clients show of real ones (the
NdoleStudio/orangemoney-go stubs, PHP and TypeScript integrations of api-s1.orange.cm), with our
numbers and ids in them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.providers.base import (
    AttemptRecord,
    Capability,
    MoneyRequest,
    ProviderStatus,
    SendResult,
)
from kunpay_worker.providers.errors import (
    ProviderAuthFailed,
    ProviderNotReached,
    ProviderRefused,
    ProviderResponseInvalid,
    ProviderThrottled,
    ProviderUnavailable,
)
from kunpay_worker.providers.orange_mp.client import OrangeMpClient
from kunpay_worker.providers.orange_mp.transformers import (
    STATUS_MAP,
    orange_msisdn,
    order_id_for,
    reason_for,
)
from kunpay_worker.settings import OrangeMpSettings, Settings
from tests.provider.contract import BackendContract, money_request

FIXTURES = Path(__file__).parent.parent / "fixtures" / "orange_mp"
BASE = "https://orange.test"
TOKEN_URL = f"{BASE}/token"
INIT_URL = f"{BASE}/omcoreapis/1.0.2/mp/init"
PAY_URL = f"{BASE}/omcoreapis/1.0.2/mp/pay"
STATUS_PREFIX = f"{BASE}/omcoreapis/1.0.2/mp/paymentstatus"
STATUS_URL = re.compile(rf"^{re.escape(STATUS_PREFIX)}/MP\w+$")
PIN = "4321"
X_AUTH = "x-auth-merchant-secret"
CLIENT_SECRET = "client-secret-value"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def pay_token() -> str:
    return "MP" + uuid.uuid4().hex[:26].upper()


def orange_request(
    kind: TransactionType = TransactionType.COLLECTION, **overrides: Any
) -> MoneyRequest:
    values: dict[str, Any] = {"operator": "ORANGE", "msisdn": "237690000000", "handle": pay_token()}
    values.update(overrides)
    return money_request(kind, **values)


def status_url(request: MoneyRequest) -> str:
    return f"{STATUS_PREFIX}/{request.handle}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> OrangeMpSettings:
    values: dict[str, Any] = {
        "base_url": BASE,
        "client_id": "client-id",
        "client_secret": CLIENT_SECRET,
        "x_auth_token": X_AUTH,
        "channel_user_msisdn": "237699112233",
        "pin": PIN,
    }
    values.update(overrides)
    return OrangeMpSettings(**values)


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
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(
    session: aiohttp.ClientSession, records: list[AttemptRecord], clock: Clock
) -> OrangeMpClient:
    async def record(attempt: AttemptRecord) -> None:
        records.append(attempt)

    return OrangeMpClient(
        settings(),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
        recorder=record,
        clock=clock,
    )


def calls(mocked: aioresponses, method: str, url: str) -> list[Any]:
    return mocked.requests.get((method, URL(url)), [])


def status_body(name: str, **data: Any) -> dict[str, Any]:
    body = fixture(name)
    body["data"].update(data)
    return body


class TestOrangeMpContract(BackendContract):
    kinds = (TransactionType.COLLECTION,)
    failures = [
        ("60019", "NOT_ENOUGH_FUNDS"),
        ("00671", "PAYER_NOT_FOUND"),
        ("99051", "PAYER_NOT_FOUND"),
        ("EXPIRED", "EXPIRED"),
        ("CANCELLED", "APPROVAL_REJECTED"),
    ]

    def request(self, kind: TransactionType) -> MoneyRequest:
        # The engine sends and looks up only after prepare() stored the payToken.
        return orange_request(kind)

    def mock_accept(self, mocked: aioresponses, request: MoneyRequest) -> None:
        mocked.post(TOKEN_URL, payload=fixture("token.json"))
        mocked.post(PAY_URL, payload=status_body("pay_pending.json", payToken=request.handle))

    def mock_send_exception(
        self, mocked: aioresponses, request: MoneyRequest, exc: Exception
    ) -> None:
        mocked.post(TOKEN_URL, payload=fixture("token.json"))
        mocked.post(PAY_URL, exception=exc)

    def mock_send_http(self, mocked: aioresponses, request: MoneyRequest, status: int) -> None:
        mocked.post(TOKEN_URL, payload=fixture("token.json"))
        if status == 429:
            mocked.post(PAY_URL, status=429, headers={"Retry-After": "7"}, body="")
        else:
            mocked.post(PAY_URL, status=status, payload=fixture(f"error_{status}.json"))

    def mock_duplicate(self, mocked: aioresponses, request: MoneyRequest) -> None:
        # Orange has no de-duplication to report; a reused payToken is an error answer.
        mocked.post(TOKEN_URL, payload=fixture("token.json"))
        mocked.post(PAY_URL, status=422, payload=fixture("pay_paytoken_used.json"))

    def mock_lookup(
        self,
        mocked: aioresponses,
        request: MoneyRequest,
        status: ProviderStatus | None,
        failure: str | None = None,
    ) -> None:
        mocked.post(TOKEN_URL, payload=fixture("token.json"))
        if status is None:
            mocked.get(status_url(request), status=404, payload=fixture("error_404.json"))
            return
        if status is ProviderStatus.COMPLETED:
            body = status_body("status_successful.json")
        elif status is ProviderStatus.FAILED and failure == "EXPIRED":
            body = status_body("status_expired.json")
        elif status is ProviderStatus.FAILED and failure == "CANCELLED":
            body = status_body("status_cancelled.json")
        elif status is ProviderStatus.FAILED:
            body = status_body(
                "status_failed_insufficient_funds.json", inittxnstatus=failure, inittxnmessage=None
            )
        else:
            body = status_body("status_pending.json")
        body["data"]["payToken"] = request.handle
        mocked.get(status_url(request), payload=body)

    def mock_lookup_malformed(self, mocked: aioresponses, request: MoneyRequest) -> None:
        mocked.post(TOKEN_URL, payload=fixture("token.json"))
        mocked.get(status_url(request), payload=fixture("status_unknown.json"))

    def mock_auth_rejected_then_accepted(self, mocked: aioresponses, request: MoneyRequest) -> bool:
        mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
        mocked.post(PAY_URL, status=401, payload=fixture("error_401.json"))
        mocked.post(PAY_URL, payload=status_body("pay_pending.json", payToken=request.handle))
        return True


# -- prepare then send -------------------------------------------------------------------------


async def test_prepare_then_send_posts_what_orange_expects(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(INIT_URL, payload=fixture("init.json"))
    mocked.post(PAY_URL, payload=fixture("pay_pending.json"))
    request = orange_request(
        handle=None, callback_url="https://pay.example/payments/orange/notify/"
    )

    token = await backend.prepare(request)
    assert token == "MP22120771FEB7B21FD2381C3786"
    receipt = await backend.send(replace(request, handle=token))
    assert receipt.result is SendResult.ACCEPTED
    assert receipt.handle == token

    (token_call,) = calls(mocked, "POST", TOKEN_URL)
    basic = token_call.kwargs["headers"]["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(basic).decode() == f"client-id:{CLIENT_SECRET}"
    assert token_call.kwargs["data"] == {"grant_type": "client_credentials"}
    bearer = f"Bearer {fixture('token.json')['access_token']}"
    (init_call,) = calls(mocked, "POST", INIT_URL)
    assert init_call.kwargs["headers"]["Authorization"] == bearer
    assert init_call.kwargs["headers"]["X-AUTH-TOKEN"] == X_AUTH
    assert init_call.kwargs["json"] is None
    (pay_call,) = calls(mocked, "POST", PAY_URL)
    assert pay_call.kwargs["headers"]["Authorization"] == bearer
    assert pay_call.kwargs["headers"]["X-AUTH-TOKEN"] == X_AUTH
    assert pay_call.kwargs["json"] == {
        "subscriberMsisdn": "690000000",
        "channelUserMsisdn": "699112233",
        "amount": "5000",
        "description": "Payment order-42",
        "orderId": request.reference,
        "pin": PIN,
        "payToken": token,
        "notifUrl": "https://pay.example/payments/orange/notify/",
    }
    assert pay_call.kwargs["timeout"].total == 5


async def test_without_a_public_url_the_notif_url_is_empty(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    # Every client sends the key; Orange's answers show "" when a merchant gave none.
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(PAY_URL, payload=fixture("pay_pending.json"))
    await backend.send(orange_request())
    (call,) = calls(mocked, "POST", PAY_URL)
    assert call.kwargs["json"]["notifUrl"] == ""


async def test_the_order_id_can_be_cut_for_orange_accounts_that_limit_it(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = OrangeMpClient(
        settings(),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
        order_id_max_length=20,
    )
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(PAY_URL, payload=fixture("pay_pending.json"))
    request = orange_request()
    await client.send(request)
    (call,) = calls(mocked, "POST", PAY_URL)
    assert call.kwargs["json"]["orderId"] == request.reference.replace("-", "")[:20]


async def test_the_pin_and_x_auth_token_never_reach_the_recorded_attempts(
    backend: OrangeMpClient, mocked: aioresponses, records: list[AttemptRecord]
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(INIT_URL, payload=fixture("init.json"))
    mocked.post(PAY_URL, payload=fixture("pay_pending.json"))
    mocked.get(STATUS_URL, payload=fixture("status_successful.json"))
    request = orange_request(handle=None)
    request = replace(request, handle=await backend.prepare(request))
    await backend.send(request)
    await backend.lookup(request)

    assert [r.operation for r in records] == ["token", "init", "pay", "payment_status"]
    assert records[2].request_body["pin"] == "***"
    dumped = "".join(repr(r) for r in records)
    for secret in (PIN, X_AUTH, CLIENT_SECRET, fixture("token.json")["access_token"]):
        assert secret not in dumped
    for number in ("690000000", "699112233", "237690000000"):
        assert number not in dumped
    assert records[2].transaction_id == request.transaction_id


async def test_a_payer_who_is_the_merchant_is_refused_before_any_http(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    for call in (backend.prepare, backend.send):
        with pytest.raises(ProviderRefused) as caught:
            await call(orange_request(msisdn="237699112233"))
        assert caught.value.provider_code == "PAYER_IS_MERCHANT"
    assert not mocked.requests


async def test_send_needs_the_pay_token_from_prepare(backend: OrangeMpClient) -> None:
    with pytest.raises(ValueError, match="payToken"):
        await backend.send(orange_request(handle=None))


async def test_orange_only_collects(backend: OrangeMpClient) -> None:
    with pytest.raises(ValueError, match="only collects"):
        await backend.send(orange_request(TransactionType.DISBURSEMENT))


# -- refusals ------------------------------------------------------------------------------------


async def test_60019_at_pay_is_a_refusal_for_not_enough_funds(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(PAY_URL, status=417, payload=fixture("pay_failed_insufficient_funds.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(orange_request())
    assert caught.value.provider_code == "NOT_ENOUGH_FUNDS"
    assert caught.value.http_status == 417
    assert "60019" in str(caught.value)


async def test_60019_in_a_status_is_not_enough_funds(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(STATUS_URL, payload=fixture("status_failed_insufficient_funds.json"))
    lookup = await backend.lookup(orange_request())
    assert (lookup.status, lookup.reason) == (ProviderStatus.FAILED, "NOT_ENOUGH_FUNDS")


async def test_a_200_pay_answer_with_an_error_code_is_a_refusal(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(PAY_URL, payload=fixture("pay_invalid_subscriber.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(orange_request())
    assert caught.value.provider_code == "PAYER_NOT_FOUND"


async def test_a_spent_pay_token_is_refused(backend: OrangeMpClient, mocked: aioresponses) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(PAY_URL, status=422, payload=fixture("pay_paytoken_used.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(orange_request())
    assert caught.value.http_status == 422


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"message": "ok"}, 200),  # neither data nor a code
        ({"message": "ok", "data": {"status": "ON_HOLD"}}, 200),
        ("<html>gateway</html>", 200),
        ({"message": "moved"}, 302),
    ],
)
async def test_an_unreadable_pay_answer_leaves_the_outcome_unknown(
    backend: OrangeMpClient, mocked: aioresponses, body: Any, status: int
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    if isinstance(body, str):
        mocked.post(PAY_URL, status=status, body=body)
    else:
        mocked.post(PAY_URL, status=status, payload=body)
    with pytest.raises(ProviderResponseInvalid):
        await backend.send(orange_request())


async def test_a_timed_out_pay_is_an_unknown_outcome(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(PAY_URL, exception=aiohttp.SocketTimeoutError("read timed out"))
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.send(orange_request())
    assert not isinstance(caught.value, ProviderNotReached)


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        ("60019", "Le solde du compte du payeur est insuffisant", "NOT_ENOUGH_FUNDS"),
        ("60019", None, "NOT_ENOUGH_FUNDS"),
        ("60019", "Utilisateur bloque", "NOT_ALLOWED"),
        (
            "60019",
            "Vous avez saisi un montant superieur au montant maximum autorise",
            "PAYER_LIMIT_REACHED",
        ),
        ("00671", None, "PAYER_NOT_FOUND"),
        ("99051", None, "PAYER_NOT_FOUND"),
        ("60022", None, "PAYER_LIMIT_REACHED"),
        ("60026", None, "SERVICE_UNAVAILABLE"),
        ("12345", None, "ORANGE_12345"),
    ],
)
def test_orange_codes_map_to_reasons(code: str, message: str | None, reason: str) -> None:
    assert reason_for(code, message) == reason


# -- prepare failures charge nothing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "mock",
    [
        {"status": 500, "payload": {"message": "Internal server error"}},
        {"status": 400, "payload": {"message": "Bad request"}},
        {"exception": TimeoutError()},
        {"exception": aiohttp.ServerDisconnectedError()},
        {"payload": {"message": "ok", "data": {}}},
    ],
)
async def test_a_failed_init_is_not_reached_because_init_charges_nothing(
    backend: OrangeMpClient, mocked: aioresponses, mock: dict[str, Any]
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(INIT_URL, **mock)
    with pytest.raises(ProviderNotReached):
        await backend.prepare(orange_request(handle=None))


async def test_init_rejected_twice_is_an_auth_failure(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.post(INIT_URL, status=401, payload=fixture("error_401.json"), repeat=True)
    with pytest.raises(ProviderAuthFailed):
        await backend.prepare(orange_request(handle=None))
    assert len(calls(mocked, "POST", INIT_URL)) == 2
    assert len(calls(mocked, "POST", TOKEN_URL)) == 2


async def test_a_throttled_init_says_when_to_come_back(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(INIT_URL, status=429, headers={"Retry-After": "3"}, body="")
    with pytest.raises(ProviderThrottled) as caught:
        await backend.prepare(orange_request(handle=None))
    assert caught.value.retry_after == 3


async def test_a_refused_connection_means_nothing_was_sent(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OrangeMpClient(
        settings(base_url=f"http://127.0.0.1:{port}"),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
    )
    with pytest.raises(ProviderNotReached):
        await client.prepare(orange_request(handle=None))
    with pytest.raises(ProviderNotReached):
        await client.send(orange_request())


@pytest.mark.parametrize(
    ("status", "error"), [(401, ProviderAuthFailed), (500, ProviderNotReached)]
)
async def test_a_failing_token_endpoint_means_nothing_was_sent(
    backend: OrangeMpClient, mocked: aioresponses, status: int, error: type[Exception]
) -> None:
    mocked.post(TOKEN_URL, status=status, payload={"error": "invalid_client"})
    with pytest.raises(error):
        await backend.send(orange_request())
    assert not calls(mocked, "POST", PAY_URL)


# -- the token -----------------------------------------------------------------------------------


async def test_a_401_drops_the_token_and_refreshes_once(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.post(PAY_URL, status=401, payload=fixture("error_401.json"))
    mocked.post(PAY_URL, payload=fixture("pay_pending.json"))
    assert (await backend.send(orange_request())).result is SendResult.ACCEPTED
    assert len(calls(mocked, "POST", TOKEN_URL)) == 2
    assert len(calls(mocked, "POST", PAY_URL)) == 2


async def test_a_second_401_is_an_auth_failure_and_nothing_was_processed(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.post(PAY_URL, status=401, payload=fixture("error_401.json"), repeat=True)
    with pytest.raises(ProviderAuthFailed) as caught:
        await backend.send(orange_request())
    assert isinstance(caught.value, ProviderNotReached)
    assert len(calls(mocked, "POST", PAY_URL)) == 2


async def test_the_token_is_reused_until_shortly_before_it_expires(
    backend: OrangeMpClient, mocked: aioresponses, clock: Clock
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.get(STATUS_URL, payload=fixture("status_pending.json"), repeat=True)
    for _ in range(3):
        await backend.lookup(orange_request())
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1
    clock.now += 3600 - 60 - 1  # expires_in minus the refresh margin, not yet reached
    await backend.lookup(orange_request())
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1
    clock.now += 2
    await backend.lookup(orange_request())
    assert len(calls(mocked, "POST", TOKEN_URL)) == 2


async def test_concurrent_calls_share_one_token_refresh(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.get(STATUS_URL, payload=fixture("status_pending.json"), repeat=True)
    await asyncio.gather(*(backend.lookup(orange_request()) for _ in range(10)))
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1


# -- lookups -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("status_pending.json", ProviderStatus.PENDING, None),
        ("status_successful.json", ProviderStatus.COMPLETED, None),
        ("status_successful_unconfirmed.json", ProviderStatus.PENDING, None),
        ("status_failed_insufficient_funds.json", ProviderStatus.FAILED, "NOT_ENOUGH_FUNDS"),
        ("status_expired.json", ProviderStatus.FAILED, "EXPIRED"),
        ("status_cancelled.json", ProviderStatus.FAILED, "APPROVAL_REJECTED"),
    ],
)
async def test_each_status_and_reason_maps(
    backend: OrangeMpClient,
    mocked: aioresponses,
    name: str,
    status: ProviderStatus,
    reason: str | None,
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(STATUS_URL, payload=fixture(name))
    lookup = await backend.lookup(orange_request())
    assert lookup.found
    assert (lookup.status, lookup.reason) == (status, reason)
    assert lookup.provider_status == fixture(name)["data"]["status"]
    if status is ProviderStatus.COMPLETED:
        assert lookup.provider_transaction_id == "MP221207.2051.B56929"


async def test_successfull_without_confirmation_200_is_not_completed(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    for confirm in (None, "", "60019"):
        mocked.get(
            STATUS_URL,
            payload=status_body("status_successful.json", confirmtxnstatus=confirm),
        )
        lookup = await backend.lookup(orange_request())
        assert lookup.status is ProviderStatus.PENDING
        assert lookup.provider_status == "SUCCESSFULL"


@pytest.mark.parametrize(
    "body", [fixture("status_unknown.json"), {"message": "ok", "data": {"payToken": "MP1"}}]
)
async def test_an_unreadable_status_is_a_response_error(
    backend: OrangeMpClient, mocked: aioresponses, body: dict[str, Any]
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(STATUS_URL, payload=body)
    with pytest.raises(ProviderResponseInvalid):
        await backend.lookup(orange_request())


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, fixture("error_404.json")), (200, {"message": "Transaction not found", "data": None})],
)
async def test_an_unknown_pay_token_is_not_found(
    backend: OrangeMpClient, mocked: aioresponses, status: int, body: dict[str, Any]
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(STATUS_URL, status=status, payload=body)
    assert not (await backend.lookup(orange_request())).found


async def test_no_pay_token_means_orange_never_heard_of_it(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    assert not (await backend.lookup(orange_request(handle=None))).found
    assert not mocked.requests


async def test_a_lookup_keeps_the_pay_token_as_the_handle(
    backend: OrangeMpClient, mocked: aioresponses
) -> None:
    request = orange_request()
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(status_url(request), payload=status_body("status_expired.json", payToken=None))
    assert (await backend.lookup(request)).handle == request.handle


def test_every_orange_status_maps_to_exactly_one_kunpay_status() -> None:
    shown = {"PENDING", "SUCCESSFULL", "FAILED", "EXPIRED", "INITIATED", "CANCELLED"}
    variants = {"SUCCESSFUL", "SUCCESS", "CANCELED"}
    assert set(STATUS_MAP) == shown | variants
    assert all(isinstance(v, ProviderStatus) for v in STATUS_MAP.values())


# -- numbers, ids, configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "national"),
    [
        ("237690000000", "690000000"),
        ("+237690000000", "690000000"),
        ("00237690000000", "690000000"),
        ("690000000", "690000000"),
    ],
)
def test_orange_takes_nine_national_digits(raw: str, national: str) -> None:
    assert orange_msisdn(raw) == national
    assert orange_msisdn(raw, with_country_code=True) == "237" + national


@pytest.mark.parametrize("raw", ["", "6900000", "2376900000001", "abc"])
def test_a_number_that_is_not_cameroonian_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="not a Cameroon number"):
        orange_msisdn(raw)


def test_the_order_id_is_our_reference_unless_cut() -> None:
    reference = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert order_id_for(reference) == reference
    assert order_id_for(reference, 20) == "0f8fad5bd9cb469fa165"


def test_each_missing_credential_is_named_by_its_variable() -> None:
    problems = OrangeMpClient.configuration_problems(Settings(orange_mp=OrangeMpSettings()))
    assert len(problems) == 1
    for name in ("CLIENT_ID", "CLIENT_SECRET", "X_AUTH_TOKEN", "CHANNEL_USER_MSISDN", "PIN"):
        assert f"KUNPAY_ORANGE_MP__{name}" in problems[0]
    assert OrangeMpClient.configuration_problems(Settings(orange_mp=settings())) == []
    wrong = Settings(orange_mp=settings(channel_user_msisdn="12345"))
    assert (
        "KUNPAY_ORANGE_MP__CHANNEL_USER_MSISDN" in OrangeMpClient.configuration_problems(wrong)[0]
    )


async def test_missing_credentials_fail_before_any_http(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = OrangeMpClient(
        settings(pin=None), session, timeout=aiohttp.ClientTimeout(total=5, connect=2)
    )
    with pytest.raises(ProviderAuthFailed, match="KUNPAY_ORANGE_MP__PIN"):
        await client.prepare(orange_request(handle=None))
    assert not mocked.requests


def test_orange_mp_is_a_collect_only_backend_that_never_resends() -> None:
    assert OrangeMpClient.name == "ORANGE_MP"
    assert OrangeMpClient.operators == frozenset({"ORANGE"})
    assert not OrangeMpClient.dedupes_by_reference
    assert OrangeMpClient.needs_prepare
    assert OrangeMpClient.capabilities == frozenset({Capability.COLLECT})
    assert OrangeMpClient.currencies(Settings(orange_mp=settings())) == ["XAF"]
