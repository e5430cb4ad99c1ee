"""PawaPay (v2) client against aioresponses.

The JSON under tests/fixtures/pawapay is written from PawaPay's v2 API reference and guides
(docs.pawapay.io: initiate deposit/payout/refund, check status, predict provider, failure
codes), not recorded live: no PawaPay account was used to make it. Ids in the fixtures are
replaced by each test's own reference, as PawaPay echoes the id it was sent.
"""

from __future__ import annotations

import base64
import hashlib
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
from kunpay_worker.providers.pawapay.client import PawapayClient
from kunpay_worker.providers.pawapay.transformers import (
    ID_FIELDS,
    INITIATION_RESULTS,
    STATUS_MAP,
    wire_amount,
)
from kunpay_worker.settings import PawapaySettings, Settings
from tests.provider.contract import BackendContract, money_request

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pawapay"
BASE = "https://pawapay.test"
TOKEN = "pp-api-token-secret"
PATHS = {
    TransactionType.COLLECTION: "/v2/deposits",
    TransactionType.DISBURSEMENT: "/v2/payouts",
    TransactionType.REFUND: "/v2/refunds",
}
FIXTURE_PREFIX = {
    TransactionType.COLLECTION: "deposit",
    TransactionType.DISBURSEMENT: "payout",
    TransactionType.REFUND: "refund",
}
PREDICT_URL = f"{BASE}/v2/predict-provider"
NOW = 1_747_294_736  # 2025-05-15T07:38:56Z


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def about(body: dict[str, Any], request: MoneyRequest) -> dict[str, Any]:
    """A fixture answer about ``request``'s id (PawaPay echoes the id it was sent)."""
    field = ID_FIELDS[request.kind]
    if "data" in body:
        data = {k: v for k, v in body["data"].items() if k not in ID_FIELDS.values()}
        return {**body, "data": {field: request.reference, **data}}
    rest = {k: v for k, v in body.items() if k not in ID_FIELDS.values()}
    return {field: request.reference, **rest}


def send_url(kind: TransactionType) -> str:
    return BASE + PATHS[kind]


def status_url(request: MoneyRequest) -> str:
    return f"{send_url(request.kind)}/{request.reference}"


def settings(**overrides: Any) -> PawapaySettings:
    values: dict[str, Any] = {
        "base_url": BASE,
        "api_token": TOKEN,
        "currencies": ["XAF"],
        "customer_message": "Shop order",
    }
    values.update(overrides)
    return PawapaySettings(**values)


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


def make_client(
    session: aiohttp.ClientSession,
    records: list[AttemptRecord] | None = None,
    **overrides: Any,
) -> PawapayClient:
    async def record(attempt: AttemptRecord) -> None:
        if records is not None:
            records.append(attempt)

    return PawapayClient(
        settings(**overrides),
        session,
        timeout=aiohttp.ClientTimeout(total=5, connect=2),
        recorder=record,
        wall_clock=lambda: float(NOW),
    )


@pytest.fixture
def backend(session: aiohttp.ClientSession, records: list[AttemptRecord]) -> PawapayClient:
    return make_client(session, records)


def calls(mocked: aioresponses, method: str, url: str) -> list[Any]:
    return mocked.requests.get((method, URL(url)), [])


def sent_body(call: Any) -> Any:
    return json.loads(call.kwargs["data"])


class TestPawapayContract(BackendContract):
    kinds = (TransactionType.COLLECTION, TransactionType.DISBURSEMENT, TransactionType.REFUND)
    failures = [
        ("INSUFFICIENT_BALANCE", "INSUFFICIENT_BALANCE"),
        ("PAYER_NOT_FOUND", "PAYER_NOT_FOUND"),
        ("PAYMENT_NOT_APPROVED", "PAYMENT_NOT_APPROVED"),
        ("RECIPIENT_NOT_FOUND", "RECIPIENT_NOT_FOUND"),
        ("UNSPECIFIED_FAILURE", "UNSPECIFIED_FAILURE"),
    ]

    def mock_accept(self, mocked: aioresponses, request: MoneyRequest) -> None:
        answer = fixture(f"{FIXTURE_PREFIX[request.kind]}_accepted.json")
        mocked.post(send_url(request.kind), payload=about(answer, request))

    def mock_send_exception(
        self, mocked: aioresponses, request: MoneyRequest, exc: Exception
    ) -> None:
        mocked.post(send_url(request.kind), exception=exc)

    def mock_send_http(self, mocked: aioresponses, request: MoneyRequest, status: int) -> None:
        if status == 429:
            mocked.post(send_url(request.kind), status=429, headers={"Retry-After": "7"}, body="")
        else:
            mocked.post(
                send_url(request.kind), status=status, payload=fixture(f"error_{status}.json")
            )

    def mock_duplicate(self, mocked: aioresponses, request: MoneyRequest) -> None:
        answer = about(fixture("deposit_duplicate_ignored.json"), request)
        mocked.post(send_url(request.kind), payload=answer)

    def mock_lookup(
        self,
        mocked: aioresponses,
        request: MoneyRequest,
        status: ProviderStatus | None,
        failure: str | None = None,
    ) -> None:
        if status is None:
            mocked.get(status_url(request), payload=fixture("status_not_found.json"))
            return
        body = fixture("deposit_status_processing.json")
        if status is ProviderStatus.COMPLETED:
            body = fixture("deposit_status_completed.json")
        elif status is ProviderStatus.FAILED:
            body = fixture("deposit_status_failed.json")
            body["data"]["failureReason"]["failureCode"] = failure
        mocked.get(status_url(request), payload=about(body, request))

    def mock_lookup_malformed(self, mocked: aioresponses, request: MoneyRequest) -> None:
        mocked.get(status_url(request), payload=about(fixture("status_unknown.json"), request))

    def mock_auth_rejected_then_accepted(self, mocked: aioresponses, request: MoneyRequest) -> bool:
        # A static API token: nothing to refresh, so the 401 is final.
        mocked.post(send_url(request.kind), status=401, payload=fixture("error_401.json"))
        answer = fixture(f"{FIXTURE_PREFIX[request.kind]}_accepted.json")
        mocked.post(send_url(request.kind), payload=about(answer, request))
        return False


# -- what goes on the wire -------------------------------------------------------------------


async def test_a_deposit_sends_what_pawapay_expects(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    request = money_request(TransactionType.COLLECTION)
    mocked.post(send_url(request.kind), payload=about(fixture("deposit_accepted.json"), request))
    assert (await backend.send(request)).result is SendResult.ACCEPTED

    (call,) = calls(mocked, "POST", send_url(request.kind))
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    assert not {"Signature", "Signature-Input", "Content-Digest"} & set(headers)
    assert sent_body(call) == {
        "depositId": request.reference,
        "amount": "5000",
        "currency": "XAF",
        "payer": {
            "type": "MMO",
            "accountDetails": {"phoneNumber": "237670000000", "provider": "MTN_MOMO_CMR"},
        },
        "customerMessage": "Shop order",
    }
    assert call.kwargs["timeout"].total == 5


async def test_a_payout_pays_the_recipient(backend: PawapayClient, mocked: aioresponses) -> None:
    request = money_request(TransactionType.DISBURSEMENT)
    mocked.post(send_url(request.kind), payload=about(fixture("payout_accepted.json"), request))
    assert (await backend.send(request)).result is SendResult.ACCEPTED
    (call,) = calls(mocked, "POST", send_url(request.kind))
    body = sent_body(call)
    assert body["payoutId"] == request.reference
    assert body["recipient"] == {
        "type": "MMO",
        "accountDetails": {"phoneNumber": "237670000000", "provider": "MTN_MOMO_CMR"},
    }
    assert "payer" not in body
    assert "depositId" not in body
    assert (body["amount"], body["currency"]) == ("5000", "XAF")


async def test_a_refund_names_the_deposit_and_carries_a_partial_amount(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    request = money_request(TransactionType.REFUND, amount=Decimal("2000"))
    mocked.post(send_url(request.kind), payload=about(fixture("refund_accepted.json"), request))
    assert (await backend.send(request)).result is SendResult.ACCEPTED
    (call,) = calls(mocked, "POST", send_url(request.kind))
    assert sent_body(call) == {
        "refundId": request.reference,
        "depositId": request.original_reference,
        "amount": "2000",
        "currency": "XAF",
    }


@pytest.mark.parametrize(
    ("kind", "party"),
    [(TransactionType.COLLECTION, "payer"), (TransactionType.DISBURSEMENT, "recipient")],
)
@pytest.mark.parametrize(
    ("operator", "msisdn", "code"),
    [("MTN", "237670000000", "MTN_MOMO_CMR"), ("ORANGE", "237690000000", "ORANGE_CMR")],
)
async def test_each_operator_is_sent_with_its_pawapay_provider_code(
    backend: PawapayClient,
    mocked: aioresponses,
    kind: TransactionType,
    party: str,
    operator: str,
    msisdn: str,
    code: str,
) -> None:
    request = money_request(kind, operator=operator, msisdn=msisdn)
    answer = fixture(f"{FIXTURE_PREFIX[kind]}_accepted.json")
    mocked.post(send_url(kind), payload=about(answer, request))
    await backend.send(request)
    (call,) = calls(mocked, "POST", send_url(kind))
    assert sent_body(call)[party]["accountDetails"] == {"phoneNumber": msisdn, "provider": code}


async def test_provider_codes_come_from_the_settings(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = make_client(session, operator_codes={"MTN": "MTN_MOMO_CMR", "ORANGE": "ORANGE_X"})
    request = money_request(operator="ORANGE", msisdn="237690000000")
    mocked.post(send_url(request.kind), payload=about(fixture("deposit_accepted.json"), request))
    await client.send(request)
    (call,) = calls(mocked, "POST", send_url(request.kind))
    assert sent_body(call)["payer"]["accountDetails"]["provider"] == "ORANGE_X"


async def test_an_operator_without_a_provider_code_is_refused_before_sending(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = make_client(session, operator_codes={"MTN": "MTN_MOMO_CMR"})
    with pytest.raises(ProviderRefused) as caught:
        await client.send(money_request(operator="ORANGE", msisdn="237690000000"))
    assert caught.value.provider_code == "UNSUPPORTED_OPERATOR"
    assert not mocked.requests


@pytest.mark.parametrize(
    ("amount", "currency", "wire"),
    [
        (Decimal("5000"), "XAF", "5000"),
        (Decimal("5E+3"), "XAF", "5000"),
        (Decimal("12.50"), "EUR", "12.5"),
        (Decimal("12.00"), "EUR", "12"),
        (Decimal("0.05"), "EUR", "0.05"),
    ],
)
def test_amounts_are_written_the_way_pawapay_reads_them(
    amount: Decimal, currency: str, wire: str
) -> None:
    assert wire_amount(amount, currency) == wire
    assert re.match(r"^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$", wire)


# -- initiation answers ----------------------------------------------------------------------


async def test_duplicate_ignored_means_the_first_send_landed(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    request = money_request()
    answer = about(fixture("deposit_duplicate_ignored.json"), request)
    mocked.post(send_url(request.kind), payload=answer)
    assert (await backend.send(request)).result is SendResult.DUPLICATE


@pytest.mark.parametrize(
    ("kind", "name", "code"),
    [
        (TransactionType.COLLECTION, "deposit_rejected.json", "AMOUNT_OUT_OF_BOUNDS"),
        (TransactionType.REFUND, "refund_rejected.json", "AMOUNT_TOO_LARGE"),
    ],
)
async def test_rejected_is_a_final_refusal_with_the_failure_code(
    backend: PawapayClient, mocked: aioresponses, kind: TransactionType, name: str, code: str
) -> None:
    request = money_request(kind)
    mocked.post(send_url(kind), payload=about(fixture(name), request))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(request)
    assert caught.value.provider_code == code
    assert caught.value.http_status == 200
    assert caught.value.reference == request.reference


async def test_a_400_is_a_refusal_with_the_failure_code(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    request = money_request()
    mocked.post(send_url(request.kind), status=400, payload=fixture("error_400.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(request)
    assert caught.value.provider_code == "INVALID_PARAMETER"


@pytest.mark.parametrize(
    ("status", "code"), [(401, "NO_AUTHENTICATION"), (403, "AUTHENTICATION_ERROR")]
)
async def test_a_refused_token_is_an_auth_failure_and_is_not_retried(
    backend: PawapayClient, mocked: aioresponses, status: int, code: str
) -> None:
    request = money_request()
    mocked.post(send_url(request.kind), status=status, payload=fixture(f"error_{status}.json"))
    with pytest.raises(ProviderAuthFailed) as caught:
        await backend.send(request)
    assert isinstance(caught.value, ProviderNotReached)
    assert caught.value.provider_code == code
    assert len(calls(mocked, "POST", send_url(request.kind))) == 1


async def test_500_is_unavailable_with_an_unknown_outcome(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    request = money_request()
    mocked.post(send_url(request.kind), status=500, payload=fixture("error_500.json"))
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.send(request)
    assert not isinstance(caught.value, ProviderNotReached)
    assert caught.value.provider_code == "UNKNOWN_ERROR"


async def test_429_is_throttled_with_retry_after(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    request = money_request()
    mocked.post(send_url(request.kind), status=429, headers={"Retry-After": "3"}, body="")
    with pytest.raises(ProviderThrottled) as caught:
        await backend.send(request)
    assert caught.value.retry_after == 3


@pytest.mark.parametrize(
    "answer",
    [
        {"depositId": "8e4c2a1b-3d5f-4e6a-9b7c-1d2e3f4a5b6c", "status": "ACCEPTED"},
        {"status": "QUEUED"},
        {"nothing": "useful"},
    ],
    ids=["another id", "unknown status", "no status"],
)
async def test_an_unreadable_initiation_answer_leaves_the_outcome_unknown(
    backend: PawapayClient, mocked: aioresponses, answer: dict[str, Any]
) -> None:
    request = money_request()
    mocked.post(send_url(request.kind), payload=answer)
    with pytest.raises(ProviderResponseInvalid):
        await backend.send(request)


async def test_a_missing_token_fails_before_any_http(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = make_client(session, api_token=None)
    with pytest.raises(ProviderAuthFailed, match="KUNPAY_PAWAPAY__API_TOKEN"):
        await client.send(money_request())
    assert not mocked.requests


async def test_a_refused_connection_means_nothing_was_sent(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(session, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderNotReached):
        await client.send(money_request())


# -- status checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "status", "reason", "provider_id"),
    [
        (TransactionType.COLLECTION, "deposit_status_accepted.json", "PENDING", None, None),
        (TransactionType.COLLECTION, "deposit_status_processing.json", "PENDING", None, None),
        (
            TransactionType.COLLECTION,
            "deposit_status_in_reconciliation.json",
            "PENDING",
            None,
            None,
        ),
        (
            TransactionType.COLLECTION,
            "deposit_status_completed.json",
            "COMPLETED",
            None,
            "ABC123456789",
        ),
        (
            TransactionType.COLLECTION,
            "deposit_status_failed.json",
            "FAILED",
            "INSUFFICIENT_BALANCE",
            None,
        ),
        (TransactionType.DISBURSEMENT, "payout_status_enqueued.json", "PENDING", None, None),
        (
            TransactionType.DISBURSEMENT,
            "payout_status_completed.json",
            "COMPLETED",
            None,
            "PP250515.0738.A12345",
        ),
        (
            TransactionType.DISBURSEMENT,
            "payout_status_failed.json",
            "FAILED",
            "RECIPIENT_NOT_FOUND",
            None,
        ),
        (
            TransactionType.REFUND,
            "refund_status_completed.json",
            "COMPLETED",
            None,
            "RF250515.0738.B67890",
        ),
    ],
)
async def test_each_status_maps_with_its_reason_and_provider_id(
    backend: PawapayClient,
    mocked: aioresponses,
    kind: TransactionType,
    name: str,
    status: str,
    reason: str | None,
    provider_id: str | None,
) -> None:
    request = money_request(kind)
    mocked.get(status_url(request), payload=about(fixture(name), request))
    lookup = await backend.lookup(request)
    assert lookup.found
    assert lookup.status is ProviderStatus(status)
    assert lookup.reason == reason
    assert lookup.provider_transaction_id == provider_id
    assert lookup.provider_status == fixture(name)["data"]["status"]


async def test_a_failure_without_a_code_is_an_unspecified_failure(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    request = money_request()
    body = fixture("deposit_status_failed.json")
    del body["data"]["failureReason"]
    mocked.get(status_url(request), payload=about(body, request))
    lookup = await backend.lookup(request)
    assert (lookup.status, lookup.reason) == (ProviderStatus.FAILED, "UNSPECIFIED_FAILURE")


@pytest.mark.parametrize("how", ["NOT_FOUND body", "HTTP 404"])
async def test_an_unknown_id_was_never_registered(
    backend: PawapayClient, mocked: aioresponses, how: str
) -> None:
    request = money_request()
    if how == "HTTP 404":
        mocked.get(status_url(request), status=404, body="")
    else:
        mocked.get(status_url(request), payload=fixture("status_not_found.json"))
    assert not (await backend.lookup(request)).found


@pytest.mark.parametrize(
    "body",
    [
        fixture("status_unknown.json"),
        {"status": "FOUND"},
        {"status": "MAYBE"},
        fixture("deposit_status_completed.json"),  # about another deposit
    ],
    ids=["unknown status", "found without data", "unknown answer", "another id"],
)
async def test_an_unreadable_status_is_a_response_error(
    backend: PawapayClient, mocked: aioresponses, body: dict[str, Any]
) -> None:
    request = money_request()
    mocked.get(status_url(request), payload=body)
    with pytest.raises(ProviderResponseInvalid):
        await backend.lookup(request)


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, ProviderAuthFailed), (429, ProviderThrottled), (503, ProviderUnavailable)],
)
async def test_status_check_errors_are_typed(
    backend: PawapayClient, mocked: aioresponses, status: int, error: type[Exception]
) -> None:
    request = money_request()
    mocked.get(status_url(request), status=status, body="")
    with pytest.raises(error):
        await backend.lookup(request)


def test_every_pawapay_status_maps_to_exactly_one_kunpay_status() -> None:
    documented = {"ACCEPTED", "PROCESSING", "IN_RECONCILIATION", "COMPLETED", "FAILED", "ENQUEUED"}
    sandbox_table = {"SUBMITTED"}  # shown by PawaPay's v2 sandbox test-number table
    assert set(STATUS_MAP) == documented | sandbox_table
    assert all(isinstance(v, ProviderStatus) for v in STATUS_MAP.values())
    assert {k for k, v in STATUS_MAP.items() if v is not ProviderStatus.PENDING} == {
        "COMPLETED",
        "FAILED",
    }
    assert INITIATION_RESULTS == {
        "ACCEPTED": SendResult.ACCEPTED,
        "DUPLICATE_IGNORED": SendResult.DUPLICATE,
        "REJECTED": None,
    }


# -- predict provider ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "msisdn", "operator"),
    [
        ("predict_provider_mtn.json", "237670000000", "MTN"),
        ("predict_provider_orange.json", "237690000000", "ORANGE"),
    ],
)
async def test_the_account_check_predicts_the_operator(
    backend: PawapayClient, mocked: aioresponses, name: str, msisdn: str, operator: str
) -> None:
    mocked.post(PREDICT_URL, payload=fixture(name))
    holder = await backend.account_holder(msisdn, operator)
    assert holder.active is None  # PawaPay cannot tell whether the wallet is active
    assert holder.operator == operator
    (call,) = calls(mocked, "POST", PREDICT_URL)
    assert sent_body(call) == {"phoneNumber": msisdn}
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


async def test_a_provider_kunpay_does_not_map_has_no_operator(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    mocked.post(
        PREDICT_URL, payload={"country": "CMR", "provider": "NEXTTEL_CMR", "phoneNumber": "1"}
    )
    assert (await backend.account_holder("237660000000", "NEXTTEL")).operator is None


async def test_an_invalid_number_is_refused_by_the_prediction(
    backend: PawapayClient, mocked: aioresponses
) -> None:
    mocked.post(PREDICT_URL, status=400, payload=fixture("predict_provider_invalid.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.account_holder("237123", "MTN")
    assert caught.value.provider_code == "INVALID_PHONE_NUMBER"


# -- configuration ---------------------------------------------------------------------------


def test_the_backend_declares_what_pawapay_can_do() -> None:
    assert PawapayClient.name == "PAWAPAY"
    assert PawapayClient.capabilities == {
        Capability.COLLECT,
        Capability.DISBURSE,
        Capability.REFUND,
        Capability.PARTIAL_REFUND,
        Capability.ACCOUNT_CHECK,
    }
    assert PawapayClient.operators == {"MTN", "ORANGE"}
    assert PawapayClient.dedupes_by_reference is True
    assert PawapayClient.needs_prepare is False
    configured = Settings(pawapay=settings(currencies=["XAF", "EUR"]))
    assert PawapayClient.currencies(configured) == ["XAF", "EUR"]


def test_a_complete_configuration_has_no_problems() -> None:
    assert PawapayClient.configuration_problems(Settings(pawapay=settings())) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"api_token": None}, "KUNPAY_PAWAPAY__API_TOKEN"),
        ({"operator_codes": {"MTN": "MTN_MOMO_CMR"}}, "ORANGE"),
        ({"signing_key": "-----BEGIN PRIVATE KEY-----"}, "KUNPAY_PAWAPAY__SIGNING_KEY_ID"),
        ({"signing_key_id": "KEY-1"}, "KUNPAY_PAWAPAY__SIGNING_KEY"),
        (
            {"signing_key": "not a key", "signing_key_id": "KEY-1"},
            "signing key unusable",
        ),
    ],
)
def test_configuration_problems_name_what_to_set(overrides: dict[str, Any], expected: str) -> None:
    problems = PawapayClient.configuration_problems(Settings(pawapay=settings(**overrides)))
    assert any(expected in p for p in problems), problems
    assert all("not a key" not in p for p in problems)


def test_a_client_without_a_total_timeout_is_refused(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="total timeout"):
        PawapayClient(settings(), session, timeout=aiohttp.ClientTimeout(connect=5))


# -- attempts are recorded without secrets -------------------------------------------------


async def test_every_exchange_is_recorded_without_secrets_or_full_numbers(
    backend: PawapayClient, mocked: aioresponses, records: list[AttemptRecord]
) -> None:
    request = money_request()
    mocked.post(send_url(request.kind), payload=about(fixture("deposit_accepted.json"), request))
    mocked.get(
        status_url(request), payload=about(fixture("deposit_status_completed.json"), request)
    )
    mocked.post(PREDICT_URL, payload=fixture("predict_provider_mtn.json"))
    await backend.send(request)
    await backend.lookup(request)
    await backend.account_holder("237670000000", "MTN")
    assert [r.operation for r in records] == ["deposit", "deposit_status", "predict_provider"]
    dumped = "".join(repr(r) for r in records)
    for secret in (TOKEN, "237670000000"):
        assert secret not in dumped
    assert records[0].request_body["depositId"] == request.reference
    assert records[0].request_body["payer"]["accountDetails"]["phoneNumber"].endswith("000")
    assert records[1].transaction_id == request.transaction_id
    assert records[2].transaction_id is None


# -- signed requests (RFC 9421) --------------------------------------------------------------


def _key_pem(kind: str) -> tuple[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


def _verify(public_key: Any, signature: bytes, data: bytes, algorithm: str) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    if algorithm == "ecdsa-p256-sha256":
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        assert algorithm == "rsa-pss-sha512"
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
        public_key.verify(signature, data, pss, hashes.SHA512())


def _signature_base(call: Any, path: str) -> tuple[str, dict[str, str]]:
    """Rebuild the signature base from what was sent, independently of the client's code."""
    headers = call.kwargs["headers"]
    label, _, params = headers["Signature-Input"].partition("=")
    assert label == "sig-pp"
    match = re.match(r"^\(([^)]*)\)((?:;[a-z]+=(?:\"[^\"]*\"|\d+))*)$", params)
    assert match, params
    names = [item.strip('"') for item in match.group(1).split()]
    meta = {
        key: value.strip('"')
        for key, value in re.findall(r";([a-z]+)=(\"[^\"]*\"|\d+)", match.group(2))
    }
    values = {
        "@method": "POST",
        "@authority": "pawapay.test",
        "@path": path,
        "signature-date": headers["Signature-Date"],
        "content-digest": headers["Content-Digest"],
        "content-type": headers["Content-Type"],
    }
    lines = [f'"{name}": {values[name]}' for name in names]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines), {"names": " ".join(names), **meta}


@pytest.mark.parametrize(
    ("key_kind", "algorithm"), [("ec", "ecdsa-p256-sha256"), ("rsa", "rsa-pss-sha512")]
)
@pytest.mark.parametrize("kind", list(PATHS))
async def test_signed_requests_verify_with_the_public_key(
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    key_kind: str,
    algorithm: str,
    kind: TransactionType,
) -> None:
    pem, public_key = _key_pem(key_kind)
    client = make_client(session, signing_key=pem, signing_key_id="KUNPAY-KEY-1")
    request = money_request(kind)
    answer = fixture(f"{FIXTURE_PREFIX[kind]}_accepted.json")
    mocked.post(send_url(kind), payload=about(answer, request))
    assert (await client.send(request)).result is SendResult.ACCEPTED

    (call,) = calls(mocked, "POST", send_url(kind))
    headers, body = call.kwargs["headers"], call.kwargs["data"]
    digest = base64.b64encode(hashlib.sha512(body).digest()).decode()
    assert headers["Content-Digest"] == f"sha-512=:{digest}:"
    assert headers["Signature-Date"] == "2025-05-15T07:38:56Z"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    base, meta = _signature_base(call, PATHS[kind])
    assert meta == {
        "names": "@method @authority @path signature-date content-digest content-type",
        "created": str(NOW),
        "expires": str(NOW + 60),
        "keyid": "KUNPAY-KEY-1",
        "alg": algorithm,
    }
    signature = base64.b64decode(headers["Signature"].removeprefix("sig-pp=:").removesuffix(":"))
    _verify(public_key, signature, base.encode(), algorithm)

    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):  # the signature covers the body through its digest
        _verify(public_key, signature, base.replace(digest, digest[::-1]).encode(), algorithm)


async def test_a_pem_with_escaped_newlines_is_accepted(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    pem, _ = _key_pem("ec")
    client = make_client(session, signing_key=pem.replace("\n", "\\n"), signing_key_id="K")
    request = money_request()
    mocked.post(send_url(request.kind), payload=about(fixture("deposit_accepted.json"), request))
    await client.send(request)
    (call,) = calls(mocked, "POST", send_url(request.kind))
    assert call.kwargs["headers"]["Signature"].startswith("sig-pp=:")


async def test_status_checks_are_not_signed(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    pem, _ = _key_pem("ec")
    client = make_client(session, signing_key=pem, signing_key_id="K")
    request = money_request()
    mocked.get(status_url(request), payload=fixture("status_not_found.json"))
    await client.lookup(request)
    (call,) = calls(mocked, "GET", status_url(request))
    assert "Signature" not in call.kwargs["headers"]
    assert call.kwargs["data"] is None
