"""Every row of the capability table end to end: each backend and each operation it supports
gives the right events, and the provider's sandbox saw exactly one initiation per reference.
What a backend cannot do is rejected before anything is sent, naming the keys that can."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from kunpay_sdk import Event, EventType, KunPayClient, Status, TransactionType
from tests.integration.harness import Stack

pytestmark = pytest.mark.integration

D = Decimal
MTN, ORANGE = "670000000", "690000000"


def order() -> str:
    return f"order-{uuid.uuid4().hex[:8]}"


async def collect(client: KunPayClient, provider: str, number: str, **kwargs: Any) -> Event:
    accepted = await client.collect(
        provider=provider,
        amount=D("5000"),
        currency="XAF",
        phone_number=number,
        order_id=order(),
        user_id="u-1",
        **kwargs,
    )
    return await client.wait(accepted.transaction_id, timeout=20)


async def disburse(client: KunPayClient, provider: str, number: str) -> Event:
    accepted = await client.disburse(
        provider=provider,
        amount=D("3000"),
        currency="XAF",
        phone_number=number,
        order_id=order(),
        user_id="u-1",
    )
    return await client.wait(accepted.transaction_id, timeout=20)


def initiations(stack: Stack, backend: str, event: Event) -> int:
    assert event.transaction is not None
    reference = event.transaction.provider_reference
    assert reference is not None
    return stack.simulators[backend].initiations[reference]


COLLECTIONS = [
    ("MTN_CAMEROON", "MTN_MOMO", MTN),
    ("PAWAPAY", "PAWAPAY", MTN),
    ("PAWAPAY", "PAWAPAY", ORANGE),
    ("FLUTTERWAVE", "FLUTTERWAVE", MTN),
    ("FLUTTERWAVE", "FLUTTERWAVE", ORANGE),
    ("ORANGE_CAMEROON", "ORANGE_MP", ORANGE),
]


@pytest.mark.parametrize(("provider", "backend", "number"), COLLECTIONS)
async def test_a_collection_succeeds_on_every_backend(
    stack: Stack, client: KunPayClient, provider: str, backend: str, number: str
) -> None:
    outcome = await collect(client, provider, number)
    assert outcome.type is EventType.SUCCEEDED
    assert outcome.transaction is not None
    assert outcome.transaction.backend == backend
    assert initiations(stack, backend, outcome) == 1


@pytest.mark.parametrize(("provider", "backend", "number"), COLLECTIONS)
async def test_a_payer_without_funds_fails_with_the_providers_reason(
    stack: Stack, client: KunPayClient, provider: str, backend: str, number: str
) -> None:
    outcome = await collect(client, provider, number[:-2] + "02")
    assert outcome.type is EventType.FAILED
    assert outcome.transaction is not None
    reason = outcome.transaction.failure_reason or ""
    assert reason in {"NOT_ENOUGH_FUNDS", "INSUFFICIENT_BALANCE"}, reason
    assert initiations(stack, backend, outcome) <= 1


@pytest.mark.parametrize(
    ("provider", "backend", "number"),
    [
        ("MTN_CAMEROON", "MTN_MOMO", MTN),
        ("PAWAPAY", "PAWAPAY", MTN),
        ("PAWAPAY", "PAWAPAY", ORANGE),
    ],
)
async def test_a_payout_succeeds_on_every_backend_that_pays_out(
    stack: Stack, client: KunPayClient, provider: str, backend: str, number: str
) -> None:
    outcome = await disburse(client, provider, number)
    assert outcome.type is EventType.SUCCEEDED
    assert outcome.transaction is not None
    assert outcome.transaction.type is TransactionType.DISBURSEMENT
    assert initiations(stack, backend, outcome) == 1


@pytest.mark.parametrize(
    ("provider", "backend", "number"),
    [
        ("MTN_CAMEROON", "MTN_MOMO", MTN),
        ("PAWAPAY", "PAWAPAY", ORANGE),
        ("FLUTTERWAVE", "FLUTTERWAVE", MTN),
    ],
)
async def test_partial_then_full_refunds_on_every_backend_that_refunds(
    stack: Stack, client: KunPayClient, provider: str, backend: str, number: str
) -> None:
    paid = await collect(client, provider, number)
    assert paid.transaction is not None
    original = paid.transaction.id
    partial = await client.wait(
        (await client.refund(original, D("2000"))).transaction_id, timeout=20
    )
    assert partial.type is EventType.REFUNDED
    assert partial.provider_refund_id
    assert initiations(stack, backend, partial) == 1
    rest = await client.wait((await client.refund(original)).transaction_id, timeout=20)
    assert rest.type is EventType.REFUNDED
    assert rest.transaction is not None
    assert rest.transaction.amount == D("3000")
    assert rest.original_transaction is not None
    assert rest.original_transaction.status is Status.REFUNDED
    assert initiations(stack, backend, rest) == 1


@pytest.mark.parametrize("provider", ["FLUTTERWAVE", "ORANGE_CAMEROON"])
async def test_a_payout_where_the_backend_cannot_pay_out_is_rejected_naming_who_can(
    client: KunPayClient, provider: str
) -> None:
    number = ORANGE if provider == "ORANGE_CAMEROON" else MTN
    outcome = await disburse(client, provider, number)
    assert outcome.type is EventType.REJECTED
    assert outcome.transaction is not None
    reason = outcome.transaction.failure_reason or ""
    assert "cannot disburse" in reason
    assert "MTN_CAMEROON, PAWAPAY" in reason


async def test_a_refund_through_orange_is_rejected_naming_who_can(client: KunPayClient) -> None:
    paid = await collect(client, "ORANGE_CAMEROON", ORANGE)
    assert paid.transaction is not None
    outcome = await client.wait(
        (await client.refund(paid.transaction.id)).transaction_id, timeout=20
    )
    assert outcome.type is EventType.REJECTED
    reason = outcome.transaction.failure_reason if outcome.transaction else ""
    assert "ORANGE_MP cannot refund" in (reason or "")
    assert "FLUTTERWAVE, MTN_CAMEROON, PAWAPAY" in (reason or "")
    assert (await client.get(paid.transaction.id)).status is Status.COMPLETED


@pytest.mark.parametrize(
    ("provider", "backend", "number"),
    [("FLUTTERWAVE", "FLUTTERWAVE", "670000031"), ("ORANGE_CAMEROON", "ORANGE_MP", "690000031")],
)
async def test_a_payment_accepted_but_answered_too_late_is_never_charged_twice(
    stack: Stack, client: KunPayClient, provider: str, backend: str, number: str
) -> None:
    # The sandbox registers the payment, then answers after the worker's timeout. These
    # providers do not de-duplicate: the worker must look it up, never send it again.
    outcome = await collect(client, provider, number)
    assert outcome.type in (EventType.SUCCEEDED, EventType.FAILED)
    assert outcome.transaction is not None
    if outcome.type is EventType.FAILED:
        assert (outcome.transaction.failure_reason or "").startswith("UNKNOWN_OUTCOME")
        assert outcome.transaction.needs_reconciliation
    else:
        assert outcome.transaction.status is Status.COMPLETED
    assert initiations(stack, backend, outcome) == 1


async def test_pawapay_tells_the_operator_of_a_number(client: KunPayClient) -> None:
    holder = await client.account_holder("PAWAPAY", ORANGE)
    assert (holder.backend, holder.operator, holder.active) == ("PAWAPAY", "ORANGE", None)


async def test_orange_secrets_never_reach_the_audit_trail(
    stack: Stack, client: KunPayClient
) -> None:
    paid = await collect(client, "ORANGE_CAMEROON", ORANGE)
    assert paid.transaction is not None
    rows = await stack.db.fetch(
        "SELECT request_body, response_body FROM provider_attempts WHERE transaction_id = $1",
        str(paid.transaction.id),
    )
    assert rows
    text = json.dumps(rows, default=str)
    assert "test-orange-x-auth" not in text
    assert '"2222"' not in text
    assert "690000000" not in text


async def test_a_refund_whose_outcome_stays_unknown_keeps_its_amount_reserved(
    stack: Stack, client: KunPayClient
) -> None:
    # 670000031: Flutterwave answers after the worker's timeout, the refund included; with no
    # refund id to look up, the refund ends UNKNOWN_OUTCOME for an operator to reconcile.
    paid = await collect(client, "FLUTTERWAVE", "670000031")
    assert paid.type is EventType.SUCCEEDED
    assert paid.transaction is not None
    original = paid.transaction.id
    outcome = await client.wait((await client.refund(original)).transaction_id, timeout=20)
    assert outcome.transaction is not None
    assert outcome.type is EventType.REFUND_FAILED
    assert (outcome.transaction.failure_reason or "").startswith("UNKNOWN_OUTCOME")
    assert outcome.transaction.needs_reconciliation
    payment = await client.get(original)
    assert payment.status is Status.COMPLETED  # not REFUND_FAILED: it may have been refunded
    assert payment.needs_reconciliation
    again = await client.wait((await client.refund(original)).transaction_id, timeout=20)
    assert again.type is EventType.REJECTED  # the amount is still reserved
    assert initiations(stack, "FLUTTERWAVE", outcome) == 1
