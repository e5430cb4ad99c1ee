"""Flutterwave v3 client against aioresponses.

The JSON under tests/fixtures/flutterwave is written from Flutterwave's documentation (the v3
API reference and guides, and the sample answers in Flutterwave's own Node SDK docs), not
recorded from the live API. Two answers are not documented at all and are marked as such where
they are used: what Flutterwave says to a reused ``tx_ref`` and the texts of failed francophone
mobile money charges.
"""

from __future__ import annotations

import json
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
    Backend,
    Lookup,
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
from kunpay_worker.providers.flutterwave.client import FlutterwaveClient
from kunpay_worker.providers.flutterwave.transformers import (
    REFUND_STATUS_MAP,
    STATUS_MAP,
    error_code,
    failure_reason,
)
from kunpay_worker.settings import FlutterwaveSettings, Settings
from tests.provider.contract import BackendContract, money_request

FIXTURES = Path(__file__).parent.parent / "fixtures" / "flutterwave"
BASE = "https://flw.test"
SECRET = "FLWSECK_TEST-0123456789abcdef0123456789abcdef-X"
EMAIL = "payments@kunpay.test"
CHARGE_URL = f"{BASE}/v3/charges?type=mobile_money_franco"
CHARGE_ID = "4193429"
REFUND_ID = "75923"


def verify_url(transaction_id: str) -> str:
    return f"{BASE}/v3/transactions/{transaction_id}/verify"


def by_reference_url(tx_ref: str) -> str:
    return f"{BASE}/v3/transactions/verify_by_reference?tx_ref={tx_ref}"


def refund_url(transaction_id: str) -> str:
    return f"{BASE}/v3/transactions/{transaction_id}/refund"


def refund_status_url(refund_id: str) -> str:
    return f"{BASE}/v3/refunds/{refund_id}"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def settings(**overrides: Any) -> FlutterwaveSettings:
    values: dict[str, Any] = {
        "base_url": BASE,
        "secret_key": SECRET,
        "customer_email": EMAIL,
    }
    values.update(overrides)
    return FlutterwaveSettings(**values)


def collection_request(**overrides: Any) -> MoneyRequest:
    return money_request(TransactionType.COLLECTION, **overrides)


def refund_request(**overrides: Any) -> MoneyRequest:
    """A refund whose send answer was stored: its Flutterwave refund id is the handle."""
    return money_request(TransactionType.REFUND, **{"handle": REFUND_ID, **overrides})


def charge_answer(request: MoneyRequest, name: str = "charge_initiated.json") -> Any:
    """A documented answer about ``request``'s own charge (tx_ref, amount, currency)."""
    body = fixture(name)
    body["data"].update(
        tx_ref=request.reference, amount=int(request.amount), currency=request.currency
    )
    return body


def refund_answer(request: MoneyRequest, name: str, charge_id: str | None = None) -> Any:
    """A documented refund answer about ``request`` (its amount, of charge ``charge_id``)."""
    body = fixture(name)
    tx_id = charge_id or request.original_handle or "0"
    body["data"].update(amount_refunded=int(request.amount), tx_id=int(tx_id))
    return body


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
def backend(session: aiohttp.ClientSession, records: list[AttemptRecord]) -> FlutterwaveClient:
    async def record(attempt: AttemptRecord) -> None:
        records.append(attempt)

    return FlutterwaveClient(
        settings(), session, timeout=aiohttp.ClientTimeout(total=5, connect=2), recorder=record
    )


def calls(mocked: aioresponses, method: str, url: str) -> list[Any]:
    return mocked.requests.get((method, URL(url)), [])


def send_url(request: MoneyRequest) -> str:
    if request.kind is TransactionType.REFUND:
        return refund_url(request.original_handle or "")
    return CHARGE_URL


class TestFlutterwaveContract(BackendContract):
    kinds = (TransactionType.COLLECTION, TransactionType.REFUND)
    # processor_response texts of failed charges. Flutterwave documents none for francophone
    # mobile money: these are the texts the sandbox answers (see kunpay_worker.sandbox.flutterwave).
    failures = [
        ("Insufficient funds", "NOT_ENOUGH_FUNDS"),
        ("Subscriber not found", "PAYER_NOT_FOUND"),
        ("Transaction declined by customer", "APPROVAL_REJECTED"),
        ("Transaction timed out", "EXPIRED"),
    ]
    # A refund carries no failure text: its status is the whole answer.
    refund_failures = [("failed", "REFUND_FAILED")]

    def request(self, kind: TransactionType) -> MoneyRequest:
        if kind is TransactionType.REFUND:
            return refund_request()
        return collection_request()

    def mock_accept(self, mocked: aioresponses, request: MoneyRequest) -> None:
        if request.kind is TransactionType.REFUND:
            mocked.post(send_url(request), payload=refund_answer(request, "refund_initiated.json"))
        else:
            mocked.post(CHARGE_URL, payload=charge_answer(request))

    def mock_send_exception(
        self, mocked: aioresponses, request: MoneyRequest, exc: Exception
    ) -> None:
        mocked.post(send_url(request), exception=exc)

    def mock_send_http(self, mocked: aioresponses, request: MoneyRequest, status: int) -> None:
        headers = {"Retry-After": "7"} if status == 429 else None
        mocked.post(
            send_url(request),
            status=status,
            headers=headers,
            payload=fixture(f"error_{status}.json"),
        )

    def mock_duplicate(self, mocked: aioresponses, request: MoneyRequest) -> None:
        # Flutterwave documents no de-duplication. A reused tx_ref is either charged again (the
        # sandbox's worst case) or refused; the refusal must read as a refusal, never as "the
        # first send landed". A repeated refund is refused once nothing is left to refund.
        name = (
            "error_refund_exceeds.json"
            if request.kind is TransactionType.REFUND
            else "error_duplicate_tx_ref.json"
        )
        mocked.post(send_url(request), status=400, payload=fixture(name))

    def mock_lookup(
        self,
        mocked: aioresponses,
        request: MoneyRequest,
        status: ProviderStatus | None,
        failure: str | None = None,
    ) -> None:
        if request.kind is TransactionType.REFUND:
            url = refund_status_url(request.handle or "")
            if status is None:
                mocked.get(url, status=404, payload=fixture("error_refund_not_found.json"))
                return
            name = {
                ProviderStatus.PENDING: "refund_pending.json",
                ProviderStatus.COMPLETED: "refund_initiated.json",
                ProviderStatus.FAILED: "refund_failed.json",
            }[status]
            mocked.get(url, payload=refund_answer(request, name))
            return
        url = by_reference_url(request.reference)
        if status is None:
            mocked.get(url, status=400, payload=fixture("error_not_found.json"))
            return
        name = {
            ProviderStatus.PENDING: "verify_pending.json",
            ProviderStatus.COMPLETED: "verify_successful.json",
            ProviderStatus.FAILED: "verify_failed.json",
        }[status]
        body = charge_answer(request, name)
        if failure is not None:
            body["data"]["processor_response"] = failure
        mocked.get(url, payload=body)

    def mock_lookup_malformed(self, mocked: aioresponses, request: MoneyRequest) -> None:
        if request.kind is TransactionType.REFUND:
            body = refund_answer(request, "refund_unknown_status.json")
            mocked.get(refund_status_url(request.handle or ""), payload=body)
        else:
            body = charge_answer(request, "verify_unknown_status.json")
            mocked.get(by_reference_url(request.reference), payload=body)

    def mock_auth_rejected_then_accepted(self, mocked: aioresponses, request: MoneyRequest) -> bool:
        mocked.post(send_url(request), status=401, payload=fixture("error_401.json"))
        self.mock_accept(mocked, request)
        return False  # a static secret key: nothing to refresh, the 401 is final

    async def test_each_failure_maps_to_its_reason(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        """The contract's test, with the failure answers of each kind: a failed refund carries
        no text, so the refund table is its status."""
        table = self.refund_failures if kind is TransactionType.REFUND else self.failures
        for failure, reason in table:
            request = self.request(kind)
            self.mock_lookup(mocked, request, ProviderStatus.FAILED, failure)
            lookup = await backend.lookup(request)
            assert lookup.status is ProviderStatus.FAILED
            assert lookup.reason == reason


# -- charges ---------------------------------------------------------------------------------


async def test_a_charge_sends_what_flutterwave_expects(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = collection_request()
    mocked.post(CHARGE_URL, payload=charge_answer(request))
    receipt = await backend.send(request)
    assert receipt.result is SendResult.ACCEPTED
    assert receipt.handle == CHARGE_ID

    (call,) = calls(mocked, "POST", CHARGE_URL)
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert call.kwargs["json"] == {
        "tx_ref": request.reference,
        "amount": "5000",
        "currency": "XAF",
        "country": "CM",
        "email": EMAIL,
        "phone_number": "237670000000",
        "network": "MTN",
    }
    assert call.kwargs["timeout"].total == 5


@pytest.mark.parametrize(
    ("networks", "operator", "expected"),
    [
        ({"MTN": "MTN", "ORANGE": "ORANGE"}, "ORANGE", "ORANGE"),
        ({"MTN": "MTN", "ORANGE": "ORANGEMONEY"}, "ORANGE", "ORANGEMONEY"),
        ({"MTN": "MTN"}, "ORANGE", None),
    ],
)
async def test_the_network_comes_from_the_settings(
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    networks: dict[str, str],
    operator: str,
    expected: str | None,
) -> None:
    client = FlutterwaveClient(
        settings(networks=networks), session, timeout=aiohttp.ClientTimeout(total=5, connect=2)
    )
    request = collection_request(operator=operator, msisdn="237690000000")
    mocked.post(CHARGE_URL, payload=charge_answer(request))
    await client.send(request)
    (call,) = calls(mocked, "POST", CHARGE_URL)
    assert call.kwargs["json"].get("network") == expected


async def test_an_http_200_with_status_error_is_a_refusal(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    mocked.post(CHARGE_URL, status=200, payload=fixture("error_status_error_http_200.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(collection_request())
    assert caught.value.provider_code == "CHARGE_COULD_NOT_BE_INITIATED"
    assert caught.value.http_status == 200


async def test_a_400_is_a_refusal_with_a_code_from_the_message(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    mocked.post(CHARGE_URL, status=400, payload=fixture("error_400_invalid_phone.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(collection_request())
    assert caught.value.provider_code == "INVALID_PHONE_NUMBER"


async def test_a_reused_tx_ref_refusal_is_never_taken_for_a_duplicate(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    mocked.post(CHARGE_URL, status=400, payload=fixture("error_duplicate_tx_ref.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(collection_request())
    assert caught.value.provider_code == "DUPLICATE_TRANSACTION_REFERENCE"
    assert backend.dedupes_by_reference is False


async def test_a_401_is_final_without_a_second_try(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    mocked.post(CHARGE_URL, status=401, payload=fixture("error_401.json"), repeat=True)
    with pytest.raises(ProviderAuthFailed) as caught:
        await backend.send(collection_request())
    assert isinstance(caught.value, ProviderNotReached)
    assert len(calls(mocked, "POST", CHARGE_URL)) == 1


async def test_a_503_timeout_leaves_the_outcome_unknown(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    mocked.post(CHARGE_URL, status=503, payload=fixture("error_503.json"))
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.send(collection_request())
    assert not isinstance(caught.value, ProviderNotReached)
    assert caught.value.http_status == 503


async def test_a_success_answer_without_an_id_leaves_the_outcome_unknown(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    mocked.post(CHARGE_URL, payload={"status": "success", "message": "Charge initiated"})
    with pytest.raises(ProviderResponseInvalid):
        await backend.send(collection_request())


async def test_missing_credentials_fail_before_any_http(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    timeout = aiohttp.ClientTimeout(total=5, connect=2)
    no_key = FlutterwaveClient(settings(secret_key=None), session, timeout=timeout)
    with pytest.raises(ProviderAuthFailed, match="KUNPAY_FLUTTERWAVE__SECRET_KEY"):
        await no_key.send(collection_request())
    no_email = FlutterwaveClient(settings(customer_email=None), session, timeout=timeout)
    with pytest.raises(ProviderNotReached, match="KUNPAY_FLUTTERWAVE__CUSTOMER_EMAIL"):
        await no_email.send(collection_request())
    assert not mocked.requests


def test_configuration_problems_name_the_missing_settings() -> None:
    complete = Settings(flutterwave={"secret_key": SECRET, "customer_email": EMAIL})
    assert FlutterwaveClient.configuration_problems(complete) == []
    problems = FlutterwaveClient.configuration_problems(Settings())
    assert len(problems) == 2
    assert "KUNPAY_FLUTTERWAVE__SECRET_KEY" in problems[0]
    assert "KUNPAY_FLUTTERWAVE__CUSTOMER_EMAIL" in problems[1]
    assert "requires an email" in problems[1]
    assert FlutterwaveClient.currencies(complete) == ["XAF"]


def test_what_the_backend_can_do() -> None:
    assert FlutterwaveClient.name == "FLUTTERWAVE"
    assert FlutterwaveClient.operators == {"MTN", "ORANGE"}
    assert {str(c) for c in FlutterwaveClient.capabilities} == {
        "collect",
        "refund",
        "partial_refund",
    }
    assert FlutterwaveClient.dedupes_by_reference is False
    assert FlutterwaveClient.needs_prepare is False


# -- verification ----------------------------------------------------------------------------


async def test_a_lookup_verifies_by_id_once_the_charge_id_is_known(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = collection_request(handle=CHARGE_ID)
    mocked.get(verify_url(CHARGE_ID), payload=charge_answer(request, "verify_successful.json"))
    lookup = await backend.lookup(request)
    assert (lookup.found, lookup.status) == (True, ProviderStatus.COMPLETED)
    assert lookup.provider_transaction_id == "JFIX8206716784151202"
    assert lookup.handle == CHARGE_ID
    assert not calls(mocked, "GET", by_reference_url(request.reference))


async def test_a_lookup_without_the_charge_id_verifies_by_tx_ref_and_learns_the_id(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = collection_request()
    mocked.get(
        by_reference_url(request.reference), payload=charge_answer(request, "verify_pending.json")
    )
    lookup = await backend.lookup(request)
    assert (lookup.status, lookup.reason) == (ProviderStatus.PENDING, None)
    assert lookup.handle == CHARGE_ID
    assert lookup.provider_status == "pending"


@pytest.mark.parametrize("answer", ["verify_successful.json", "verify_pending.json"])
@pytest.mark.parametrize(
    "change",
    [
        {"tx_ref": "someone-elses-tx-ref"},
        {"amount": 4999},
        {"amount": 50000},
        {"currency": "XOF"},
    ],
    ids=["tx_ref", "less", "more", "currency"],
)
async def test_an_answer_about_another_charge_is_never_completed(
    backend: FlutterwaveClient, mocked: aioresponses, answer: str, change: dict[str, Any]
) -> None:
    request = collection_request(handle=CHARGE_ID)
    body = charge_answer(request, answer)
    body["data"].update(change)
    mocked.get(verify_url(CHARGE_ID), payload=body)
    with pytest.raises(ProviderResponseInvalid, match="not ours"):
        await backend.lookup(request)


async def test_an_unknown_charge_id_is_not_found(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = collection_request(handle="999")
    mocked.get(verify_url("999"), status=400, payload=fixture("error_not_found.json"))
    assert await backend.lookup(request) == Lookup(found=False)


async def test_a_404_that_is_not_flutterwaves_answer_proves_nothing(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = collection_request(handle=CHARGE_ID)
    mocked.get(verify_url(CHARGE_ID), status=404, body="<html>Not Found</html>")
    with pytest.raises(ProviderResponseInvalid):
        await backend.lookup(request)


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, ProviderThrottled), (401, ProviderAuthFailed), (500, ProviderUnavailable)],
)
async def test_lookup_errors_are_translated(
    backend: FlutterwaveClient, mocked: aioresponses, status: int, error: type[Exception]
) -> None:
    request = collection_request()
    mocked.get(
        by_reference_url(request.reference),
        status=status,
        headers={"Retry-After": "7"},
        payload=fixture("error_500.json"),
    )
    with pytest.raises(error):
        await backend.lookup(request)


@pytest.mark.parametrize(
    ("text", "status", "reason"),
    [
        ("Insufficient funds", "failed", "NOT_ENOUGH_FUNDS"),
        ("Transaction limit exceeded", "failed", "PAYER_LIMIT_REACHED"),
        ("Transaction not permitted", "failed", "NOT_ALLOWED"),
        ("Mobile money service unavailable", "failed", "SERVICE_UNAVAILABLE"),
        ("Something new happened!", "failed", "SOMETHING_NEW_HAPPENED"),
        (None, "failed", "FAILED"),
        ("", "cancelled", "CANCELLED"),
    ],
)
def test_failure_texts_become_stable_reasons(text: str | None, status: str, reason: str) -> None:
    assert failure_reason(text, status) == reason


def test_error_codes_are_stable_and_bounded() -> None:
    assert error_code("Invalid phone number") == "INVALID_PHONE_NUMBER"
    assert error_code(None) == ""
    assert len(error_code("x " * 200)) <= 64


def test_every_flutterwave_status_maps_to_exactly_one_kunpay_status() -> None:
    assert set(STATUS_MAP) == {
        "pending",
        "success-pending-validation",
        "successful",
        "failed",
        "cancelled",
    }
    assert [s for s, m in STATUS_MAP.items() if m is ProviderStatus.COMPLETED] == ["successful"]
    assert set(REFUND_STATUS_MAP) == {
        "pending",
        "completed",
        "completed-mpgs",
        "successful",
        "failed",
    }
    for table in (STATUS_MAP, REFUND_STATUS_MAP):
        assert all(isinstance(v, ProviderStatus) for v in table.values())


# -- refunds ---------------------------------------------------------------------------------


async def test_a_refund_posts_the_amount_to_the_charge_and_keeps_the_refund_id(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = money_request(TransactionType.REFUND, amount=Decimal("2000"))
    mocked.post(refund_url("1234567"), payload=refund_answer(request, "refund_initiated.json"))
    receipt = await backend.send(request)
    assert (receipt.result, receipt.handle) == (SendResult.ACCEPTED, REFUND_ID)
    (call,) = calls(mocked, "POST", refund_url("1234567"))
    assert call.kwargs["json"] == {
        "amount": "2000",  # partial refunds carry their amount
        "comments": f"kunpay refund {request.reference}",
    }
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {SECRET}"

    stored = money_request(
        TransactionType.REFUND,
        amount=Decimal("2000"),
        handle=receipt.handle,
        original_handle="1234567",
    )
    mocked.get(refund_status_url(REFUND_ID), payload=refund_answer(stored, "refund_initiated.json"))
    lookup = await backend.lookup(stored)
    assert (lookup.status, lookup.reason) == (ProviderStatus.COMPLETED, None)
    assert lookup.provider_transaction_id == "URF_1577867664541_3572735"
    assert lookup.handle == REFUND_ID


async def test_a_refund_without_its_id_cannot_be_looked_up(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    lookup = await backend.lookup(money_request(TransactionType.REFUND))
    assert not lookup.found
    assert not mocked.requests


@pytest.mark.parametrize(
    "change", [{"amount_refunded": 4000}, {"tx_id": 7654321}], ids=["amount", "charge"]
)
async def test_a_refund_answer_about_another_refund_is_never_completed(
    backend: FlutterwaveClient, mocked: aioresponses, change: dict[str, Any]
) -> None:
    request = refund_request()
    body = refund_answer(request, "refund_initiated.json")
    body["data"].update(change)
    mocked.get(refund_status_url(REFUND_ID), payload=body)
    with pytest.raises(ProviderResponseInvalid, match="not ours"):
        await backend.lookup(request)


async def test_a_refund_finds_the_charge_id_by_tx_ref_when_only_the_flw_ref_is_known(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = money_request(TransactionType.REFUND, original_handle="JFIX8206716784151202")
    assert request.original_reference is not None
    original = collection_request(reference=request.original_reference)
    mocked.get(
        by_reference_url(request.original_reference),
        payload=charge_answer(original, "verify_successful.json"),
    )
    answer = refund_answer(request, "refund_initiated.json", CHARGE_ID)
    mocked.post(refund_url(CHARGE_ID), payload=answer)
    assert (await backend.send(request)).handle == REFUND_ID
    assert len(calls(mocked, "POST", refund_url(CHARGE_ID))) == 1


async def test_a_failed_search_for_the_refunded_charge_sends_nothing(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = money_request(TransactionType.REFUND, original_handle=None)
    assert request.original_reference is not None
    mocked.get(by_reference_url(request.original_reference), status=500, body="")
    with pytest.raises(ProviderNotReached):
        await backend.send(request)
    mocked.get(
        by_reference_url(request.original_reference),
        status=400,
        payload=fixture("error_not_found.json"),
    )
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(request)
    assert caught.value.provider_code == "ORIGINAL_NOT_FOUND"
    assert not [key for key in mocked.requests if key[0] == "POST"]


async def test_a_refund_above_what_is_left_is_refused(
    backend: FlutterwaveClient, mocked: aioresponses
) -> None:
    request = refund_request()
    mocked.post(refund_url("1234567"), status=400, payload=fixture("error_refund_exceeds.json"))
    with pytest.raises(ProviderRefused) as caught:
        await backend.send(request)
    assert caught.value.provider_code is not None
    assert caught.value.provider_code.startswith("REFUND_AMOUNT_CANNOT_EXCEED")


# -- the audit trail -------------------------------------------------------------------------


async def test_every_exchange_is_recorded_without_the_secret_key_or_full_numbers(
    backend: FlutterwaveClient, mocked: aioresponses, records: list[AttemptRecord]
) -> None:
    request = collection_request()
    mocked.post(CHARGE_URL, payload=charge_answer(request))
    mocked.get(
        by_reference_url(request.reference),
        payload=charge_answer(request, "verify_successful.json"),
    )
    await backend.send(request)
    await backend.lookup(request)
    assert [r.operation for r in records] == ["charge", "verify_by_reference"]
    dumped = "".join(repr(r) for r in records)
    assert SECRET not in dumped
    assert "237670000000" not in dumped
    assert records[0].request_body["phone_number"].endswith("000")
    assert records[0].url == "/v3/charges?type=mobile_money_franco"
    assert records[0].response_status == 200
    assert records[1].transaction_id == request.transaction_id
