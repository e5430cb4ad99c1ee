from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

import kunpay_sdk
from kunpay_sdk.contracts import (
    TRANSACTION_NAMESPACE,
    CollectCommand,
    Event,
    check_correlation_id,
    command_fingerprint,
    transaction_id_for,
    validate_payment,
    validate_refund_amount,
)
from kunpay_sdk.errors import InvalidAmount, InvalidField, UnknownProvider, ValidationError

GOOD = {
    "provider": "MTN_CAMEROON",
    "amount": Decimal("5000"),
    "currency": "XAF",
    "phone_number": "670000000",
    "order_id": "order-42",
    "user_id": "u-1",
}


def test_the_transaction_id_is_uuid5_of_app_operation_and_key() -> None:
    tid = transaction_id_for("shop", "collect", "key-1")
    assert tid == uuid.uuid5(TRANSACTION_NAMESPACE, "shop:collect:key-1")
    assert tid == transaction_id_for("shop", "collect", "key-1")
    assert tid.version == 5


@pytest.mark.parametrize(
    ("app", "operation", "key"),
    [("other", "collect", "key-1"), ("shop", "disburse", "key-1"), ("shop", "collect", "key-2")],
)
def test_another_app_operation_or_key_gives_another_transaction(
    app: str, operation: str, key: str
) -> None:
    assert transaction_id_for(app, operation, key) != transaction_id_for("shop", "collect", "key-1")


def test_the_namespace_never_changes() -> None:
    # Existing transaction ids depend on it: changing it would break idempotency across versions.
    assert str(TRANSACTION_NAMESPACE) == "6f1e2d3c-4b5a-5968-8776-a5b4c3d2e1f0"


def test_equivalent_inputs_have_one_fingerprint() -> None:
    a = validate_payment(**GOOD)
    b = validate_payment(**{**GOOD, "phone_number": "+237 670 000 000", "amount": Decimal("5E+3")})
    assert command_fingerprint("collect", a.model_dump()) == command_fingerprint(
        "collect", b.model_dump()
    )
    c = validate_payment(**{**GOOD, "amount": Decimal("5001")})
    assert command_fingerprint("collect", a.model_dump()) != command_fingerprint(
        "collect", c.model_dump()
    )
    assert command_fingerprint("collect", a.model_dump()) != command_fingerprint(
        "disburse", a.model_dump()
    )


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("provider", "MTN", UnknownProvider),
        ("provider", None, UnknownProvider),
        ("order_id", "", InvalidField),
        ("order_id", "   ", InvalidField),
        ("user_id", "x" * 201, InvalidField),
        ("user_id", 12, InvalidField),
        ("order_id", "a\x00b", InvalidField),  # no database column holds NUL
        ("user_id", "a\ud800b", InvalidField),  # a lone surrogate cannot be encoded
    ],
)
def test_bad_fields_raise_value_errors(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        validate_payment(**{**GOOD, field: value})
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ValidationError)


@pytest.mark.parametrize(
    ("amount", "taken"),
    [
        (None, None),
        (Decimal("12.5"), Decimal("12.5")),
        (Decimal("0.0001"), Decimal("0.0001")),
        (Decimal("12.50000000"), Decimal("12.5")),  # trailing zeros are not places
        (Decimal("5E+3"), Decimal(5000)),
        (Decimal("0.00001"), InvalidAmount),  # finer than the wire's decimal(18, 4)
        (Decimal("1234567890.12345"), InvalidAmount),
        (Decimal(0), InvalidAmount),
        (Decimal("NaN"), InvalidAmount),
        (Decimal("100000000000.0001"), InvalidAmount),  # over the maximum
        (1.5, InvalidAmount),
    ],
)
def test_refund_amounts_are_positive_and_fit_the_wire(
    amount: object, taken: Decimal | type[Exception] | None
) -> None:
    if isinstance(taken, type):
        with pytest.raises(taken):
            validate_refund_amount(amount)
    else:
        assert validate_refund_amount(amount) == taken


@pytest.mark.parametrize(
    ("value", "taken"),
    [(None, True), ("c-1", True), ("é" * 127 + "x", True), ("é" * 128, False), ("", False)],
)
def test_a_correlation_id_fits_the_amqp_property(value: str | None, taken: bool) -> None:
    if taken:
        assert check_correlation_id(value) == value
    else:
        with pytest.raises(InvalidField):
            check_correlation_id(value)


def test_commands_round_trip_with_amounts_as_strings() -> None:
    fields = validate_payment(**GOOD)
    command = CollectCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for("shop", "collect", "k"),
        idempotency_key="k",
        issued_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        **fields.model_dump(exclude={"operator"}),
    )
    wire = command.model_dump_json()
    assert '"amount":"5000"' in wire
    assert '"schema_version":1' in wire
    assert CollectCommand.model_validate_json(wire) == command


def event_json(**overrides: object) -> str:
    body: dict[str, object] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "payment.initiated",
        "occurred_at": "2026-01-01T00:00:00Z",
        "sequence": 1,
        "transaction": None,
    }
    body.update(overrides)
    return json.dumps(body)


def test_a_newer_schema_version_is_not_read_as_ours() -> None:
    with pytest.raises(ValueError, match="schema_version"):
        Event.model_validate_json(event_json(schema_version=2))


def test_unknown_fields_from_newer_writers_are_ignored() -> None:
    assert Event.model_validate_json(event_json(added_later=3)).sequence == 1


def test_process_outside_a_subscription_is_a_clear_error() -> None:
    event = Event.model_validate_json(event_json())
    with pytest.raises(RuntimeError, match=r"events\(\)"):
        event.process()


def test_the_public_api_is_exactly_what_all_says() -> None:
    exported = {name for name in dir(kunpay_sdk) if not name.startswith("_")}
    modules = {"client", "contracts", "errors", "money", "msisdn", "topology"}
    assert exported - modules == set(kunpay_sdk.__all__)
    for name in kunpay_sdk.__all__:
        assert getattr(kunpay_sdk, name).__module__.startswith("kunpay_sdk")
