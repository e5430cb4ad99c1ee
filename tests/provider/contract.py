"""What every collection backend must do, whatever its API. Each backend's test module
subclasses :class:`CollectionContract` and supplies the provider-specific mocks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from aioresponses import aioresponses

from kunpay_worker.providers.base import (
    CollectionBackend,
    CollectionRequest,
    ProviderStatus,
    SendResult,
)
from kunpay_worker.providers.errors import (
    ProviderNotReached,
    ProviderRefused,
    ProviderUnavailable,
)


def collection_request(**overrides: Any) -> CollectionRequest:
    values: dict[str, Any] = {
        "transaction_id": str(uuid.uuid4()),
        "reference": str(uuid.uuid4()),
        "amount": Decimal("5000"),
        "currency": "XAF",
        "msisdn": "237670000000",
        "message": "Payment order-42",
    }
    values.update(overrides)
    return CollectionRequest(**values)


class CollectionContract:
    """Subclasses provide ``backend`` and the mock_* helpers for their API."""

    mock_accept: Callable[..., None]
    mock_send_status: Callable[..., None]
    mock_send_exception: Callable[..., None]
    mock_lookup: Callable[..., None]

    async def test_an_accepted_request_is_accepted(
        self, backend: CollectionBackend, mocked: aioresponses
    ) -> None:
        request = collection_request()
        self.mock_accept(mocked, request.reference)
        assert await backend.request_collection(request) is SendResult.ACCEPTED

    async def test_a_server_error_leaves_the_outcome_unknown(
        self, backend: CollectionBackend, mocked: aioresponses
    ) -> None:
        request = collection_request()
        self.mock_send_status(mocked, 500)
        with pytest.raises(ProviderUnavailable) as caught:
            await backend.request_collection(request)
        assert not isinstance(caught.value, ProviderNotReached)

    async def test_a_timeout_leaves_the_outcome_unknown(
        self, backend: CollectionBackend, mocked: aioresponses
    ) -> None:
        self.mock_send_exception(mocked, TimeoutError())
        with pytest.raises(ProviderUnavailable) as caught:
            await backend.request_collection(collection_request())
        assert not isinstance(caught.value, ProviderNotReached)

    async def test_a_refusal_is_final_and_carries_the_reason(
        self, backend: CollectionBackend, mocked: aioresponses
    ) -> None:
        self.mock_send_status(mocked, 400)
        with pytest.raises(ProviderRefused) as caught:
            await backend.request_collection(collection_request())
        assert caught.value.provider_code

    @pytest.mark.parametrize(
        "status", [ProviderStatus.PENDING, ProviderStatus.COMPLETED, ProviderStatus.FAILED]
    )
    async def test_a_lookup_maps_the_providers_status(
        self, backend: CollectionBackend, mocked: aioresponses, status: ProviderStatus
    ) -> None:
        reference = str(uuid.uuid4())
        self.mock_lookup(mocked, reference, status)
        lookup = await backend.lookup_collection(reference, None)
        assert lookup.found
        assert lookup.status is status
        assert (lookup.reason is not None) == (status is ProviderStatus.FAILED)

    async def test_a_lookup_of_an_unknown_reference_says_not_found(
        self, backend: CollectionBackend, mocked: aioresponses
    ) -> None:
        reference = str(uuid.uuid4())
        self.mock_lookup(mocked, reference, None)
        assert not (await backend.lookup_collection(reference, None)).found
