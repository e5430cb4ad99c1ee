"""MTN MoMo client against aioresponses, fed with JSON shaped like MTN's documented answers
(tests/fixtures/mtn_momo; written from MTN's API reference and its sandbox's behaviour)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.providers.base import AttemptRecord, MoneyRequest, ProviderStatus, SendResult
from kunpay_worker.providers.errors import (
    ProviderAuthFailed,
    ProviderNotReached,
    ProviderRefused,
    ProviderResponseInvalid,
    ProviderThrottled,
    ProviderUnavailable,
)
from kunpay_worker.providers.mtn_momo.client import MtnMomoClient
from kunpay_worker.providers.mtn_momo.transformers import STATUS_MAP
from kunpay_worker.settings import MtnMomoSettings, MtnProduct
from tests.provider.contract import BackendContract, money_request

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mtn_momo"
BASE = "https://mtn.test"
TOKEN_URL = f"{BASE}/collection/token/"
RTP_URL = f"{BASE}/collection/v1_0/requesttopay"
STATUS_URL = re.compile(rf"^{re.escape(RTP_URL)}/[0-9a-f-]+$")
DISBURSEMENT_TOKEN_URL = f"{BASE}/disbursement/token/"
TRANSFER_URL = f"{BASE}/disbursement/v1_0/transfer"
REFUND_URL = f"{BASE}/disbursement/v1_0/refund"
BALANCE_URL = f"{BASE}/disbursement/v1_0/account/balance"
SEND_URLS = {
    TransactionType.COLLECTION: (TOKEN_URL, RTP_URL),
    TransactionType.DISBURSEMENT: (DISBURSEMENT_TOKEN_URL, TRANSFER_URL),
    TransactionType.REFUND: (DISBURSEMENT_TOKEN_URL, REFUND_URL),
}


def collection_request(**overrides: Any) -> MoneyRequest:
    return money_request(TransactionType.COLLECTION, **overrides)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> MtnMomoSettings:
    values: dict[str, Any] = {
        "base_url": BASE,
        "target_environment": "mtncameroon",
        "currencies": ["XAF"],
        "collection": MtnProduct(
            subscription_key="sub-key",  # type: ignore[arg-type]
            api_user="8f2c9a51-0d3e-4e21-9b7a-2c5d6e7f8a90",
            api_key="api-key-secret",  # type: ignore[arg-type]
        ),
        "disbursement": MtnProduct(
            subscription_key="disb-sub-key",  # type: ignore[arg-type]
            api_user="1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
            api_key="disb-api-key-secret",  # type: ignore[arg-type]
        ),
    }
    values.update(overrides)
    return MtnMomoSettings(**values)


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
) -> MtnMomoClient:
    async def record(attempt: AttemptRecord) -> None:
        records.append(attempt)

    return MtnMomoClient(
        settings(),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
        recorder=record,
        clock=clock,
    )


def calls(mocked: aioresponses, method: str, url: str) -> list[Any]:
    return mocked.requests.get((method, URL(url)), [])


class TestMtnMomoContract(BackendContract):
    kinds = (TransactionType.COLLECTION, TransactionType.DISBURSEMENT, TransactionType.REFUND)
    failures = [
        ("NOT_ENOUGH_FUNDS", "NOT_ENOUGH_FUNDS"),
        ("PAYER_NOT_FOUND", "PAYER_NOT_FOUND"),
        ("APPROVAL_REJECTED", "APPROVAL_REJECTED"),
        ("EXPIRED", "EXPIRED"),
    ]

    def mock_accept(self, mocked: aioresponses, request: MoneyRequest) -> None:
        token, url = SEND_URLS[request.kind]
        mocked.post(token, payload=fixture("token.json"))
        mocked.post(url, status=202)

    def mock_send_exception(
        self, mocked: aioresponses, request: MoneyRequest, exc: Exception
    ) -> None:
        token, url = SEND_URLS[request.kind]
        mocked.post(token, payload=fixture("token.json"))
        mocked.post(url, exception=exc)

    def mock_send_http(self, mocked: aioresponses, request: MoneyRequest, status: int) -> None:
        token, url = SEND_URLS[request.kind]
        mocked.post(token, payload=fixture("token.json"))
        if status == 429:
            mocked.post(url, status=429, headers={"Retry-After": "7"}, body="")
        else:
            mocked.post(url, status=status, payload=fixture(f"error_{status}.json"))

    def mock_duplicate(self, mocked: aioresponses, request: MoneyRequest) -> None:
        self.mock_send_http(mocked, request, 409)

    def mock_lookup(
        self,
        mocked: aioresponses,
        request: MoneyRequest,
        status: ProviderStatus | None,
        failure: str | None = None,
    ) -> None:
        token, url = SEND_URLS[request.kind]
        mocked.post(token, payload=fixture("token.json"))
        if status is None:
            mocked.get(f"{url}/{request.reference}", status=404, payload=fixture("error_404.json"))
            return
        body = dict(fixture("status_pending.json"))
        if status is ProviderStatus.COMPLETED:
            body = fixture("status_successful.json")
        elif status is ProviderStatus.FAILED:
            body = {**fixture("status_failed_not_enough_funds.json"), "reason": failure}
        mocked.get(f"{url}/{request.reference}", payload=body)

    def mock_lookup_malformed(self, mocked: aioresponses, request: MoneyRequest) -> None:
        token, url = SEND_URLS[request.kind]
        mocked.post(token, payload=fixture("token.json"))
        mocked.get(f"{url}/{request.reference}", payload=fixture("status_unknown.json"))

    def mock_auth_rejected_then_accepted(self, mocked: aioresponses, request: MoneyRequest) -> bool:
        token, url = SEND_URLS[request.kind]
        mocked.post(token, payload=fixture("token.json"), repeat=True)
        mocked.post(url, status=401, payload=fixture("error_401.json"))
        mocked.post(url, status=202)
        return True


async def test_request_to_pay_sends_what_mtn_expects(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, status=202)
    request = collection_request(
        callback_url="https://pay.example/payments/momo/collection/webhook/"
    )
    assert (await backend.send(request)).result is SendResult.ACCEPTED

    (token_call,) = calls(mocked, "POST", TOKEN_URL)
    assert token_call.kwargs["headers"]["Authorization"].startswith("Basic ")
    assert token_call.kwargs["headers"]["Ocp-Apim-Subscription-Key"] == "sub-key"
    (call,) = calls(mocked, "POST", RTP_URL)
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {fixture('token.json')['access_token']}"
    assert headers["X-Reference-Id"] == request.reference
    assert headers["X-Target-Environment"] == "mtncameroon"
    assert headers["Ocp-Apim-Subscription-Key"] == "sub-key"
    assert headers["X-Callback-Url"] == request.callback_url
    body = call.kwargs["json"]
    assert body["amount"] == "5000"
    assert body["currency"] == "XAF"
    assert body["payer"] == {"partyIdType": "MSISDN", "partyId": "237670000000"}
    assert body["externalId"] == request.transaction_id
    assert body["payerMessage"]
    assert body["payeeNote"]
    assert call.kwargs["timeout"].total == 5


async def test_no_callback_header_without_a_public_url(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, status=202)
    await backend.send(collection_request())
    (call,) = calls(mocked, "POST", RTP_URL)
    assert "X-Callback-Url" not in call.kwargs["headers"]


async def test_409_means_the_reference_was_already_sent(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, status=409, payload=fixture("error_409.json"))
    assert (await backend.send(collection_request())).result is SendResult.DUPLICATE


async def test_a_401_drops_the_token_and_refreshes_once(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.post(RTP_URL, status=401, payload=fixture("error_401.json"))
    mocked.post(RTP_URL, status=202)
    assert (await backend.send(collection_request())).result is SendResult.ACCEPTED
    assert len(calls(mocked, "POST", TOKEN_URL)) == 2
    assert len(calls(mocked, "POST", RTP_URL)) == 2


async def test_a_second_401_is_an_auth_failure_and_nothing_was_processed(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.post(RTP_URL, status=401, payload=fixture("error_401.json"), repeat=True)
    with pytest.raises(ProviderAuthFailed) as caught:
        await backend.send(collection_request())
    assert isinstance(caught.value, ProviderNotReached)
    assert len(calls(mocked, "POST", RTP_URL)) == 2


async def test_500_is_unavailable_with_an_unknown_outcome(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, status=500, payload=fixture("error_500.json"))
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.send(collection_request())
    assert not isinstance(caught.value, ProviderNotReached)
    assert caught.value.http_status == 500
    assert caught.value.provider_code == "INTERNAL_PROCESSING_ERROR"


async def test_a_timeout_is_unavailable_with_an_unknown_outcome(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, exception=aiohttp.SocketTimeoutError("read timed out"))
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.send(collection_request())
    assert not isinstance(caught.value, ProviderNotReached)


async def test_a_refused_connection_means_nothing_was_sent(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = MtnMomoClient(
        settings(base_url=f"http://127.0.0.1:{port}"),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
    )
    with pytest.raises(ProviderNotReached):
        await client.send(collection_request())


async def test_a_failing_token_endpoint_means_nothing_was_sent(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, status=500, payload=fixture("error_500.json"))
    with pytest.raises(ProviderNotReached):
        await backend.send(collection_request())
    assert not calls(mocked, "POST", RTP_URL)


async def test_a_timed_out_token_call_means_nothing_was_sent(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, exception=TimeoutError())
    with pytest.raises(ProviderNotReached):
        await backend.send(collection_request())


async def test_400_is_a_refusal_with_mtns_code(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, status=400, payload=fixture("error_400.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(collection_request())
    assert caught.value.provider_code == "PAYER_NOT_FOUND"


async def test_429_is_throttled_with_retry_after(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, status=429, headers={"Retry-After": "7"}, body="")
    with pytest.raises(ProviderThrottled) as caught:
        await backend.send(collection_request())
    assert caught.value.retry_after == 7


async def test_a_404_lookup_means_mtn_never_registered_the_reference(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(STATUS_URL, status=404, payload=fixture("error_404.json"))
    lookup = await backend.lookup(collection_request())
    assert not lookup.found


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("status_pending.json", ProviderStatus.PENDING, None),
        ("status_ongoing.json", ProviderStatus.PENDING, None),
        ("status_successful.json", ProviderStatus.COMPLETED, None),
        ("status_failed_not_enough_funds.json", ProviderStatus.FAILED, "NOT_ENOUGH_FUNDS"),
        ("status_failed_reason_object.json", ProviderStatus.FAILED, "PAYER_NOT_FOUND"),
        ("status_rejected.json", ProviderStatus.FAILED, "APPROVAL_REJECTED"),
        ("status_timeout.json", ProviderStatus.FAILED, "EXPIRED"),
    ],
)
async def test_each_status_and_reason_maps(
    backend: MtnMomoClient,
    mocked: aioresponses,
    name: str,
    status: ProviderStatus,
    reason: str | None,
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(STATUS_URL, payload=fixture(name))
    lookup = await backend.lookup(collection_request())
    assert lookup.found
    assert lookup.status is status
    assert lookup.reason == reason
    if status is ProviderStatus.COMPLETED:
        assert lookup.provider_transaction_id == "1786544915"


@pytest.mark.parametrize("body", [fixture("status_unknown.json"), {"nothing": "useful"}])
async def test_an_unreadable_status_is_a_response_error(
    backend: MtnMomoClient, mocked: aioresponses, body: dict[str, Any]
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(STATUS_URL, payload=body)
    with pytest.raises(ProviderResponseInvalid):
        await backend.lookup(collection_request())


def test_every_mtn_status_maps_to_exactly_one_kunpay_status() -> None:
    documented = {"PENDING", "SUCCESSFUL", "FAILED"}
    sandbox = {"REJECTED", "TIMEOUT", "ONGOING", "CREATED", "EXPIRED"}
    assert set(STATUS_MAP) == documented | sandbox
    assert all(isinstance(v, ProviderStatus) for v in STATUS_MAP.values())


async def test_the_token_is_reused_until_shortly_before_it_expires(
    backend: MtnMomoClient, mocked: aioresponses, clock: Clock
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.get(STATUS_URL, payload=fixture("status_pending.json"), repeat=True)
    for _ in range(3):
        await backend.lookup(collection_request())
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1
    clock.now += 3600 - 60 - 1  # expires_in minus the refresh margin, not yet reached
    await backend.lookup(collection_request())
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1
    clock.now += 2
    await backend.lookup(collection_request())
    assert len(calls(mocked, "POST", TOKEN_URL)) == 2


async def test_concurrent_calls_share_one_token_refresh(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"), repeat=True)
    mocked.get(STATUS_URL, payload=fixture("status_pending.json"), repeat=True)
    await asyncio.gather(*(backend.lookup(collection_request()) for _ in range(10)))
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1


async def test_missing_credentials_fail_before_any_http(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = MtnMomoClient(
        settings(collection=MtnProduct()),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
    )
    with pytest.raises(ProviderAuthFailed, match="credentials missing"):
        await client.send(collection_request())
    assert not mocked.requests


def test_a_client_without_a_total_timeout_is_refused(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="total timeout"):
        MtnMomoClient(settings(), session, timeout=aiohttp.ClientTimeout(connect=5))


async def test_every_exchange_is_recorded_without_secrets_or_full_numbers(
    backend: MtnMomoClient, mocked: aioresponses, records: list[AttemptRecord]
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.post(RTP_URL, status=202)
    mocked.get(STATUS_URL, payload=fixture("status_successful.json"))
    request = collection_request()
    await backend.send(request)
    await backend.lookup(request)
    assert [r.operation for r in records] == ["token", "request_to_pay", "request_to_pay_status"]
    dumped = "".join(repr(r) for r in records)
    for secret in (
        "api-key-secret",
        "sub-key",
        fixture("token.json")["access_token"],
        "237670000000",
    ):
        assert secret not in dumped
    assert records[1].response_status == 202
    assert records[2].transaction_id == request.transaction_id


# -- disbursement, refunds, balance, account holder ----------------------------------------------


async def test_a_transfer_pays_the_payee_with_the_disbursement_credentials(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(DISBURSEMENT_TOKEN_URL, payload=fixture("token.json"))
    mocked.post(TRANSFER_URL, status=202)
    request = money_request(TransactionType.DISBURSEMENT)
    assert (await backend.send(request)).result is SendResult.ACCEPTED
    (token_call,) = calls(mocked, "POST", DISBURSEMENT_TOKEN_URL)
    assert token_call.kwargs["headers"]["Ocp-Apim-Subscription-Key"] == "disb-sub-key"
    (call,) = calls(mocked, "POST", TRANSFER_URL)
    assert call.kwargs["headers"]["Ocp-Apim-Subscription-Key"] == "disb-sub-key"
    assert call.kwargs["headers"]["X-Reference-Id"] == request.reference
    body = call.kwargs["json"]
    assert body["payee"] == {"partyIdType": "MSISDN", "partyId": "237670000000"}
    assert "payer" not in body
    assert body["amount"] == "5000"


async def test_a_transfer_status_maps_payee_failures(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    request = money_request(TransactionType.DISBURSEMENT)
    mocked.post(DISBURSEMENT_TOKEN_URL, payload=fixture("token.json"))
    mocked.get(
        f"{TRANSFER_URL}/{request.reference}",
        payload=fixture("transfer_failed_payee_not_found.json"),
    )
    lookup = await backend.lookup(request)
    assert (lookup.status, lookup.reason) == (ProviderStatus.FAILED, "PAYEE_NOT_FOUND")
    mocked.get(f"{TRANSFER_URL}/{request.reference}", payload=fixture("transfer_successful.json"))
    lookup = await backend.lookup(request)
    assert lookup.status is ProviderStatus.COMPLETED
    assert lookup.provider_transaction_id == "363440463"


async def test_a_refund_names_the_request_to_pay_it_refunds(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(DISBURSEMENT_TOKEN_URL, payload=fixture("token.json"))
    mocked.post(REFUND_URL, status=202)
    request = money_request(TransactionType.REFUND, amount=Decimal("2000"))
    assert (await backend.send(request)).result is SendResult.ACCEPTED
    (call,) = calls(mocked, "POST", REFUND_URL)
    body = call.kwargs["json"]
    assert body["referenceIdToRefund"] == request.original_reference
    assert body["amount"] == "2000"  # partial refunds carry their amount
    mocked.get(f"{REFUND_URL}/{request.reference}", payload=fixture("refund_successful.json"))
    lookup = await backend.lookup(request)
    assert lookup.status is ProviderStatus.COMPLETED
    assert lookup.provider_transaction_id == "918273645"


async def test_the_balance_is_read_from_the_disbursement_account(
    backend: MtnMomoClient, mocked: aioresponses
) -> None:
    mocked.post(DISBURSEMENT_TOKEN_URL, payload=fixture("token.json"))
    mocked.get(BALANCE_URL, payload=fixture("balance.json"))
    balance = await backend.balance()
    assert (balance.amount, balance.currency) == (Decimal("1000000"), "XAF")


@pytest.mark.parametrize(
    ("name", "status", "active"),
    [
        ("accountholder_active.json", 200, True),
        ("accountholder_inactive.json", 200, False),
        ("error_404.json", 404, False),
    ],
)
async def test_the_account_holder_check_says_whether_the_account_is_active(
    backend: MtnMomoClient, mocked: aioresponses, name: str, status: int, active: bool
) -> None:
    mocked.post(TOKEN_URL, payload=fixture("token.json"))
    mocked.get(
        f"{BASE}/collection/v1_0/accountholder/msisdn/237670000000/active",
        status=status,
        payload=fixture(name),
    )
    holder = await backend.account_holder("237670000000", "MTN")
    assert holder.active is active


@pytest.mark.parametrize(
    ("active", "balance", "reason"),
    [
        (True, "1000000", None),
        (False, "1000000", "PAYEE_ACCOUNT_INACTIVE"),
        (True, "100", "INSUFFICIENT_BALANCE"),
    ],
)
async def test_a_payout_is_checked_before_anything_is_sent(
    backend: MtnMomoClient,
    mocked: aioresponses,
    active: bool,
    balance: str,
    reason: str | None,
) -> None:
    mocked.post(DISBURSEMENT_TOKEN_URL, payload=fixture("token.json"))
    mocked.get(
        f"{BASE}/disbursement/v1_0/accountholder/msisdn/237670000000/active",
        payload={"result": active},
    )
    mocked.get(BALANCE_URL, payload={"availableBalance": balance, "currency": "XAF"})
    found = await backend.preflight(money_request(TransactionType.DISBURSEMENT))
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(reason)
    assert not calls(mocked, "POST", TRANSFER_URL)


async def test_preflight_checks_can_be_turned_off(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = MtnMomoClient(
        settings(check_balance_before_transfer=False, check_account_holder=False),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
    )
    assert await client.preflight(money_request(TransactionType.DISBURSEMENT)) is None
    assert not mocked.requests
