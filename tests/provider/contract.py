"""What every backend must do, whatever its API.

Each backend's test module subclasses :class:`BackendContract`, sets ``kinds`` (the transaction
types it handles) and implements the ``mock_*`` hooks with its own recorded answers. The
``backend`` and ``mocked`` fixtures come from the subclass's module.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from aioresponses import aioresponses

from kunpay_sdk.contracts import TransactionType
from kunpay_worker.providers.base import Backend, MoneyRequest, ProviderStatus, SendResult
from kunpay_worker.providers.errors import (
    ProviderAuthFailed,
    ProviderNotReached,
    ProviderResponseInvalid,
    ProviderThrottled,
    ProviderUnavailable,
)


def money_request(
    kind: TransactionType = TransactionType.COLLECTION, **overrides: Any
) -> MoneyRequest:
    values: dict[str, Any] = {
        "kind": kind,
        "transaction_id": str(uuid.uuid4()),
        "reference": str(uuid.uuid4()),
        "amount": Decimal("5000"),
        "currency": "XAF",
        "msisdn": "237670000000",
        "operator": "MTN",
        "message": "Payment order-42",
    }
    if kind is TransactionType.REFUND:
        values.update(
            original_reference=str(uuid.uuid4()),
            original_handle="1234567",
            original_amount=Decimal("5000"),
        )
    values.update(overrides)
    return MoneyRequest(**values)


class BackendContract:
    kinds: ClassVar[tuple[TransactionType, ...]] = (TransactionType.COLLECTION,)
    # (provider's failure answer, the reason kunpay records): at least one per backend.
    failures: ClassVar[list[tuple[str, str]]] = []

    # -- hooks a backend's test class implements ---------------------------------------------

    def request(self, kind: TransactionType) -> MoneyRequest:
        return money_request(kind)

    def mock_accept(self, mocked: aioresponses, request: MoneyRequest) -> None:
        raise NotImplementedError

    def mock_send_exception(
        self, mocked: aioresponses, request: MoneyRequest, exc: Exception
    ) -> None:
        raise NotImplementedError

    def mock_send_http(self, mocked: aioresponses, request: MoneyRequest, status: int) -> None:
        """The money request answered with an HTTP error status (429, 500)."""
        raise NotImplementedError

    def mock_duplicate(self, mocked: aioresponses, request: MoneyRequest) -> None:
        """The provider's answer to a reference it already has."""
        raise NotImplementedError

    def mock_lookup(
        self,
        mocked: aioresponses,
        request: MoneyRequest,
        status: ProviderStatus | None,
        failure: str | None = None,
    ) -> None:
        """``status=None``: the provider does not know the reference."""
        raise NotImplementedError

    def mock_lookup_malformed(self, mocked: aioresponses, request: MoneyRequest) -> None:
        raise NotImplementedError

    def mock_auth_rejected_then_accepted(self, mocked: aioresponses, request: MoneyRequest) -> bool:
        """Mock an expired/revoked credential answered 401 once, then the send accepted.
        Return False when the backend's credential is static (then 401 is final)."""
        raise NotImplementedError

    # -- the contract ------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Every contract test runs once per transaction type the backend handles."""
        if "kind" in metafunc.fixturenames:
            metafunc.parametrize("kind", self.kinds, ids=[str(k) for k in self.kinds])

    async def test_success(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_accept(mocked, request)
        receipt = await backend.send(request)
        assert receipt.result is SendResult.ACCEPTED
        self.mock_lookup(mocked, request, ProviderStatus.COMPLETED)
        lookup = await backend.lookup(request)
        assert lookup.found
        assert lookup.status is ProviderStatus.COMPLETED
        assert lookup.reason is None

    async def test_each_failure_maps_to_its_reason(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        assert self.failures, "list at least one provider failure"
        for failure, reason in self.failures:
            request = self.request(kind)
            self.mock_lookup(mocked, request, ProviderStatus.FAILED, failure)
            lookup = await backend.lookup(request)
            assert lookup.status is ProviderStatus.FAILED
            assert lookup.reason == reason

    async def test_pending_then_success(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_lookup(mocked, request, ProviderStatus.PENDING)
        assert (await backend.lookup(request)).status is ProviderStatus.PENDING
        self.mock_lookup(mocked, request, ProviderStatus.COMPLETED)
        assert (await backend.lookup(request)).status is ProviderStatus.COMPLETED

    async def test_late_success_after_a_failure_is_reported(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        failure = self.failures[0][0]
        self.mock_lookup(mocked, request, ProviderStatus.FAILED, failure)
        assert (await backend.lookup(request)).status is ProviderStatus.FAILED
        self.mock_lookup(mocked, request, ProviderStatus.COMPLETED)
        assert (await backend.lookup(request)).status is ProviderStatus.COMPLETED

    async def test_a_timeout_leaves_the_outcome_unknown_and_a_lookup_settles_it(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_send_exception(mocked, request, TimeoutError())
        with pytest.raises(ProviderUnavailable) as caught:
            await backend.send(request)
        assert not isinstance(caught.value, ProviderNotReached)
        self.mock_lookup(mocked, request, ProviderStatus.COMPLETED)
        assert (await backend.lookup(request)).status is ProviderStatus.COMPLETED

    async def test_a_server_error_leaves_the_outcome_unknown(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_send_http(mocked, request, 500)
        with pytest.raises(ProviderUnavailable) as caught:
            await backend.send(request)
        assert not isinstance(caught.value, ProviderNotReached)

    async def test_a_duplicate_reference_is_the_first_send_landing_or_refused(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_duplicate(mocked, request)
        if backend.dedupes_by_reference:
            assert (await backend.send(request)).result is SendResult.DUPLICATE
        else:
            # No de-duplication: the engine never resends, so any answer but a second charge.
            with pytest.raises(Exception):  # noqa: B017
                await backend.send(request)

    async def test_429_is_throttled_and_nothing_was_processed(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_send_http(mocked, request, 429)
        with pytest.raises(ProviderThrottled) as caught:
            await backend.send(request)
        assert isinstance(caught.value, ProviderNotReached)
        assert caught.value.retry_after == 7

    async def test_an_expired_credential_is_refreshed_or_reported(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        refreshes = self.mock_auth_rejected_then_accepted(mocked, request)
        if refreshes:
            assert (await backend.send(request)).result is SendResult.ACCEPTED
        else:
            with pytest.raises(ProviderAuthFailed):
                await backend.send(request)

    async def test_a_malformed_status_is_a_response_error(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_lookup_malformed(mocked, request)
        with pytest.raises(ProviderResponseInvalid):
            await backend.lookup(request)

    async def test_an_unknown_reference_is_not_found(
        self, backend: Backend, mocked: aioresponses, kind: TransactionType
    ) -> None:
        request = self.request(kind)
        self.mock_lookup(mocked, request, None)
        assert not (await backend.lookup(request)).found
