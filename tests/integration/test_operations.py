"""Every operation end to end on MTN MoMo through the real broker, worker and database:
payouts, refunds, retries, verify, list, balance, account holder, quotes and payment types."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from kunpay_sdk import EventType, KunPayClient, RemoteError, Status, TransactionType
from tests.integration.harness import EventLog, Stack

pytestmark = pytest.mark.integration

D = Decimal


def order() -> str:
    return f"order-{uuid.uuid4().hex[:8]}"


async def pay(client: KunPayClient, number: str = "670000000", **kwargs: Any) -> uuid.UUID:
    values: dict[str, Any] = {
        "provider": "MTN_CAMEROON",
        "amount": D("5000"),
        "currency": "XAF",
        "phone_number": number,
        "order_id": order(),
        "user_id": "u-1",
    }
    values.update(kwargs)
    accepted = await client.collect(**values)
    outcome = await client.wait(accepted.transaction_id, timeout=20)
    return outcome.transaction.id if outcome.transaction else accepted.transaction_id


async def payout(client: KunPayClient, number: str = "670000000", amount: str = "5000") -> Any:
    accepted = await client.disburse(
        provider="MTN_CAMEROON",
        amount=D(amount),
        currency="XAF",
        phone_number=number,
        order_id=order(),
        user_id="u-1",
    )
    return await client.wait(accepted.transaction_id, timeout=20)


# -- payouts ----------------------------------------------------------------------------------


async def test_a_payout_succeeds(stack: Stack, client: KunPayClient) -> None:
    outcome = await payout(client)
    assert outcome.type is EventType.SUCCEEDED
    tx = outcome.transaction
    assert tx is not None
    assert tx.type is TransactionType.DISBURSEMENT
    assert tx.status is Status.COMPLETED
    assert tx.provider_reference is not None
    assert stack.mtn.initiations[tx.provider_reference] == 1


async def test_a_payout_to_an_unknown_payee_fails_with_the_reason(client: KunPayClient) -> None:
    outcome = await payout(client, "670000001")
    assert outcome.type is EventType.FAILED
    assert outcome.transaction is not None
    assert outcome.transaction.failure_reason == "PAYEE_NOT_FOUND"


@pytest.mark.parametrize(
    ("number", "amount", "reason"),
    [
        ("670000040", "5000", "PAYEE_ACCOUNT_INACTIVE"),
        ("670000000", "2000000", "INSUFFICIENT_BALANCE"),
    ],
)
async def test_a_payout_the_checks_refuse_fails_with_nothing_sent(
    stack: Stack, client: KunPayClient, number: str, amount: str, reason: str
) -> None:
    outcome = await payout(client, number, amount)
    assert outcome.type is EventType.FAILED
    tx = outcome.transaction
    assert tx is not None
    assert (tx.failure_reason or "").startswith(reason)
    assert tx.provider_reference is not None
    assert stack.mtn.requests[tx.provider_reference] == 0  # nothing sent


# -- refunds ----------------------------------------------------------------------------------


async def refund(client: KunPayClient, original: uuid.UUID, amount: str | None = None) -> Any:
    accepted = await client.refund(original, D(amount) if amount else None)
    return await client.wait(accepted.transaction_id, timeout=20)


async def test_a_full_refund_refunds_the_payment(
    stack: Stack, client: KunPayClient, events: EventLog
) -> None:
    original = await pay(client)
    outcome = await refund(client, original)
    assert outcome.type is EventType.REFUNDED
    tx = outcome.transaction
    assert tx is not None
    assert (tx.type, tx.status, tx.amount) == (TransactionType.REFUND, Status.COMPLETED, D("5000"))
    assert tx.original_transaction_id == original
    assert outcome.original_transaction is not None
    assert outcome.original_transaction.id == original
    assert outcome.original_transaction.status is Status.REFUNDED
    assert outcome.original_transaction.amount_refunded == D("5000")
    assert outcome.provider_refund_id
    assert (await client.get(original)).status is Status.REFUNDED
    # The refund never announces payment.succeeded; the original announces its REFUNDED.
    await events.final(tx.id)
    assert EventType.SUCCEEDED not in [e.type for e in events.of(tx.id)]
    await events.wait_for(
        lambda e: (
            e.transaction is not None
            and e.transaction.id == original
            and e.type is EventType.REFUNDED
        )
    )
    rows = await stack.db.fetch(
        "SELECT provider_refund_id, manual_refund_id FROM refunds WHERE transaction_id = $1",
        str(tx.id),
    )
    assert rows == [{"provider_refund_id": outcome.provider_refund_id, "manual_refund_id": None}]


async def test_partial_refunds_add_up_to_a_full_one(client: KunPayClient) -> None:
    original = await pay(client)
    for part in ("2000", "2000"):
        assert (await refund(client, original, part)).type is EventType.REFUNDED
    payment = await client.get(original)
    assert (payment.status, payment.amount_refunded) == (Status.COMPLETED, D("4000"))
    rest = await refund(client, original)  # all that is left
    assert rest.transaction is not None
    assert rest.transaction.amount == D("1000")
    assert (await client.get(original)).status is Status.REFUNDED


async def test_more_than_was_paid_is_refused(client: KunPayClient) -> None:
    original = await pay(client)
    outcome = await refund(client, original, "6000")
    assert outcome.type is EventType.REJECTED
    assert "more than the 5000" in (outcome.transaction.failure_reason or "")  # type: ignore[union-attr]
    assert (await client.get(original)).amount_refunded == 0


async def test_racing_partial_refunds_never_exceed_what_was_paid(client: KunPayClient) -> None:
    original = await pay(client)
    accepted = await asyncio.gather(*(client.refund(original, D("3000")) for _ in range(2)))
    outcomes = await asyncio.gather(*(client.wait(a.transaction_id, timeout=20) for a in accepted))
    assert sorted(o.type for o in outcomes) == sorted([EventType.REFUNDED, EventType.REJECTED])
    payment = await client.get(original)
    assert payment.amount_refunded == D("3000")


async def taken_in(events: EventLog, transaction_id: uuid.UUID) -> None:
    """The worker recorded the command (a later command must not overtake it)."""
    await events.wait_for(
        lambda e: (
            e.type is EventType.INITIATED
            and e.transaction is not None
            and e.transaction.id == transaction_id
        )
    )


@pytest.mark.parametrize("number", ["670000002", "670000010"])
async def test_a_payment_that_did_not_complete_cannot_be_refunded(
    client: KunPayClient, events: EventLog, number: str
) -> None:
    accepted = await client.collect(
        provider="MTN_CAMEROON",
        amount=D("5000"),
        currency="XAF",
        phone_number=number,
        order_id=order(),
        user_id="u-1",
    )
    await taken_in(events, accepted.transaction_id)
    if number == "670000002":
        await client.wait(accepted.transaction_id, timeout=20)
    outcome = await refund(client, accepted.transaction_id)
    assert outcome.type is EventType.REJECTED
    assert "cannot be refunded" in (outcome.transaction.failure_reason or "")  # type: ignore[union-attr]


async def test_a_failed_refund_marks_the_payment_and_releases_the_amount(
    client: KunPayClient,
) -> None:
    original = await pay(client, "670000050")  # the sandbox fails refunds of this payer
    outcome = await refund(client, original, "2000")
    assert outcome.type is EventType.REFUND_FAILED
    assert outcome.original_transaction is not None
    assert outcome.original_transaction.status is Status.REFUND_FAILED
    payment = await client.get(original)
    assert (payment.status, payment.amount_refunded) == (Status.REFUND_FAILED, D("0"))
    again = await refund(client, original)  # the whole amount is refundable again
    assert again.transaction is not None
    assert again.transaction.amount == D("5000")


# -- retries ----------------------------------------------------------------------------------


async def test_a_failed_collection_is_retried_once_per_key_with_a_new_reference(
    client: KunPayClient,
) -> None:
    failed = await pay(client, "670000002")
    original = await client.get(failed)
    assert original.status is Status.FAILED
    first = await client.retry(failed)
    again = await client.retry(failed)
    assert again.transaction_id == first.transaction_id  # one retry per failed transaction
    outcome = await client.wait(first.transaction_id, timeout=20)
    retry = outcome.transaction
    assert retry is not None
    assert retry.original_transaction_id == failed
    assert retry.type is TransactionType.COLLECTION
    assert retry.provider_reference != original.provider_reference
    # The same payer still has no funds; retry the retry to go again.
    assert outcome.type is EventType.FAILED
    second = await client.retry(retry.id)
    assert (await client.wait(second.transaction_id, timeout=20)).type is EventType.FAILED


@pytest.mark.parametrize("number", ["670000000", "670000010"])
async def test_only_failed_collections_are_retried(
    client: KunPayClient, events: EventLog, number: str
) -> None:
    accepted = await client.collect(
        provider="MTN_CAMEROON",
        amount=D("5000"),
        currency="XAF",
        phone_number=number,
        order_id=order(),
        user_id="u-1",
    )
    await taken_in(events, accepted.transaction_id)
    if number == "670000000":
        await client.wait(accepted.transaction_id, timeout=20)
    outcome = await client.wait(
        (await client.retry(accepted.transaction_id)).transaction_id, timeout=20
    )
    assert outcome.type is EventType.REJECTED
    assert "NOT_RETRYABLE" in (outcome.transaction.failure_reason or "")  # type: ignore[union-attr]


async def test_a_late_success_is_announced_and_a_double_charge_detected(
    client: KunPayClient, events: EventLog
) -> None:
    # 670000011: the first payment from the number FAILS, then turns SUCCESSFUL a second later.
    number = "670000011"
    accepted = await client.collect(
        provider="MTN_CAMEROON",
        amount=D("5000"),
        currency="XAF",
        phone_number=number,
        order_id=order(),
        user_id="u-1",
    )
    assert (await client.wait(accepted.transaction_id, timeout=20)).type is EventType.FAILED
    retry = await client.retry(accepted.transaction_id)
    assert (await client.wait(retry.transaction_id, timeout=20)).type is EventType.SUCCEEDED
    late = await events.wait_for(
        lambda e: (
            e.transaction is not None
            and e.transaction.id == accepted.transaction_id
            and e.type is EventType.SUCCEEDED
        )
    )
    assert late.late
    duplicate = await events.wait_for(
        lambda e: (
            e.type is EventType.DUPLICATE_DETECTED
            and e.transaction is not None
            and e.transaction.id == accepted.transaction_id
        )
    )
    assert duplicate.original_transaction is not None
    assert duplicate.original_transaction.id == retry.transaction_id
    assert "DOUBLE_CHARGE" in (duplicate.reason or "")
    assert (await client.get(accepted.transaction_id)).status is Status.COMPLETED


# -- verify, list, balance, account holder ----------------------------------------------------


async def test_verify_asks_the_provider_and_returns_the_transaction(
    client: KunPayClient, events: EventLog
) -> None:
    pending = await client.collect(
        provider="MTN_CAMEROON",
        amount=D("5000"),
        currency="XAF",
        phone_number="670000010",
        order_id=order(),
        user_id="u-1",
    )
    await taken_in(events, pending.transaction_id)
    done = await pay(client)
    assert (await client.verify(done)).status is Status.COMPLETED
    tx = await client.verify(pending.transaction_id)
    assert tx.status is Status.PENDING


async def test_list_filters_this_apps_transactions(client: KunPayClient) -> None:
    shared = order()
    ids = {await pay(client, order_id=shared) for _ in range(2)}
    await pay(client)
    listed = await client.list(order_id=shared)
    assert {t.id for t in listed} == ids
    assert [t.id for t in await client.list(order_id=shared, status=Status.FAILED)] == []
    assert len(await client.list(limit=1)) == 1


async def test_balance_and_account_holder(client: KunPayClient) -> None:
    before = await client.balance("MTN_CAMEROON")
    assert before.currency == "XAF"
    await payout(client, amount="1000")
    after = await client.balance("MTN_CAMEROON")
    assert after.amount == before.amount - 1000
    assert (await client.account_holder("MTN_CAMEROON", "670000000")).active is True
    assert (await client.account_holder("MTN_CAMEROON", "670000040")).active is False


async def test_a_backend_that_cannot_tell_a_balance_says_so(client: KunPayClient) -> None:
    with pytest.raises(RemoteError, match="cannot tell balance"):
        await client.balance("PAWAPAY")


# -- payment types and quotes -----------------------------------------------------------------


async def test_payment_types_price_quotes_and_payments(stack: Stack, client: KunPayClient) -> None:
    name = f"mtn-{uuid.uuid4().hex[:6]}"
    await stack.cli(
        "payment-types", "add", "--name", "MTN mobile money", "--short-name", name,
        "--class", "mobile_money", "--provider", "MTN_CAMEROON",
        "--fixed-provider-fee", "50", "--percentage-provider-fee", "2.5",
        "--percentage-platform-fee", "1",
    )  # fmt: skip
    quote = await client.quote(name, D("5000"))
    assert (quote.gross_amount, quote.fee_amount, quote.net_amount) == (
        D("5234"),
        D("234"),
        D("5000"),
    )

    tx = await client.get(await pay(client, amount=quote.gross_amount, payment_type=name))
    assert (tx.payment_type, tx.gross_amount, tx.fee_amount, tx.net_amount) == (
        name,
        D("5234"),
        D("234"),
        D("5000"),
    )

    await stack.cli("payment-types", "deactivate", name)
    with pytest.raises(RemoteError, match="no active payment type"):
        await client.quote(name, D("5000"))
    accepted = await client.collect(
        provider="MTN_CAMEROON", amount=D("5000"), currency="XAF", phone_number="670000000",
        order_id=order(), user_id="u-1", payment_type=name,
    )  # fmt: skip
    outcome = await client.wait(accepted.transaction_id, timeout=20)
    assert outcome.type is EventType.REJECTED
