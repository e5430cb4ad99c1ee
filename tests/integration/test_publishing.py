"""What the SDK refuses before publishing, and what it says when publishing goes wrong."""

from __future__ import annotations

import uuid
from decimal import Decimal

import aio_pika
import pytest

from kunpay_sdk import (
    EventType,
    InvalidAmount,
    InvalidCurrency,
    InvalidField,
    InvalidPhoneNumber,
    KunPayClient,
    OutcomeUnknown,
    TopologyMissing,
    UnknownProvider,
    UnsupportedOperator,
    ValidationError,
)
from tests.integration.harness import GOOD, EventLog, Stack, create_vhost, delete_vhost

pytestmark = pytest.mark.integration


INVALID = [
    ({"amount": 5000.0}, InvalidAmount, "Decimal"),
    ({"amount": Decimal("-1")}, InvalidAmount, "greater than zero"),
    ({"amount": Decimal("0")}, InvalidAmount, "greater than zero"),
    ({"amount": Decimal("5000.5")}, InvalidAmount, "whole units"),
    ({"currency": "USD"}, InvalidCurrency, "unknown currency"),
    ({"currency": "EUR"}, InvalidCurrency, "sandbox"),
    ({"phone_number": "12345"}, InvalidPhoneNumber, "not a valid Cameroon"),
    ({"phone_number": "237237670000000"}, InvalidPhoneNumber, "not a valid Cameroon"),
    ({"phone_number": "690000000"}, UnsupportedOperator, "ORANGE number"),
    ({"phone_number": "660000000", "provider": "PAWAPAY"}, UnsupportedOperator, "NEXTTEL"),
    ({"provider": "MTN"}, UnknownProvider, "unknown provider key"),
    ({"order_id": ""}, InvalidField, "order_id"),
    ({"idempotency_key": ""}, InvalidField, "idempotency_key"),
]


async def queued_commands(stack: Stack) -> int:
    async with await aio_pika.connect(stack.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("kunpay.commands", passive=True)
        count = queue.declaration_result.message_count
        assert count is not None
        return count


async def test_invalid_input_raises_a_clear_value_error_and_publishes_nothing(
    own_stack: Stack,
) -> None:
    # own_stack: the topology is declared, but no worker consumes, so nothing published is lost.
    async with await own_stack.client() as client:
        for overrides, error, message in INVALID:
            with pytest.raises(error, match=message) as caught:
                await client.collect(**{**GOOD, **overrides})
            assert isinstance(caught.value, ValueError)
            assert isinstance(caught.value, ValidationError)
        assert await queued_commands(own_stack) == 0
        # The same client publishes a valid command fine: the check above can see one.
        await client.collect(**GOOD)
        assert await queued_commands(own_stack) == 1


async def test_invalid_payouts_refunds_retries_and_requests_publish_nothing(
    own_stack: Stack,
) -> None:
    async with await own_stack.client() as client:
        with pytest.raises(InvalidAmount):
            await client.disburse(**{**GOOD, "amount": 10.0})
        with pytest.raises(UnsupportedOperator):
            await client.disburse(**{**GOOD, "phone_number": "690000000"})
        for amount in (Decimal("0"), Decimal("-5"), 12.5, Decimal("NaN")):
            with pytest.raises(InvalidAmount):
                await client.refund(uuid.uuid4(), amount)  # type: ignore[arg-type]
        with pytest.raises(InvalidField, match="UUID"):
            await client.refund("not-a-uuid", None)  # type: ignore[arg-type]
        with pytest.raises(InvalidField, match="UUID"):
            await client.retry("42")  # type: ignore[arg-type]
        with pytest.raises(InvalidField):
            await client.retry(uuid.uuid4(), idempotency_key="")
        with pytest.raises(UnknownProvider):
            await client.balance("MTN")
        with pytest.raises(InvalidPhoneNumber):
            await client.account_holder("MTN_CAMEROON", "12")
        with pytest.raises(InvalidAmount):
            await client.quote("mtn", Decimal("-1"))
        assert await queued_commands(own_stack) == 0


async def test_connecting_before_the_topology_exists_says_so() -> None:
    name, url = await create_vhost()
    try:
        with pytest.raises(TopologyMissing, match="kunpay-worker migrate"):
            await KunPayClient.connect(url)
    finally:
        await delete_vhost(name)


async def test_an_unknown_outcome_carries_the_ids_and_a_retry_with_its_key_is_one_transaction(
    stack: Stack,
) -> None:
    async with await KunPayClient.connect(stack.amqp_url, publish_timeout=0) as client:
        events = await EventLog(client).start()
        try:
            with pytest.raises(OutcomeUnknown) as caught:
                await client.collect(**GOOD)
            err = caught.value
            assert err.idempotency_key
            assert isinstance(err.transaction_id, uuid.UUID)
            assert isinstance(err.command_id, uuid.UUID)

            client.publish_timeout = 10
            retry = await client.collect(**GOOD, idempotency_key=err.idempotency_key)
            assert retry.transaction_id == err.transaction_id
            outcome = await client.wait(retry.transaction_id, timeout=15)
            assert outcome.type is EventType.SUCCEEDED
        finally:
            await events.close()
