from __future__ import annotations

from typing import Any

import pytest

from kunpay_worker.providers.base import Capability
from kunpay_worker.providers.registry import (
    BACKENDS,
    backend_rejection,
    configuration_problems,
    rejection_for,
)
from kunpay_worker.settings import Settings

PRODUCT = {"subscription_key": "s", "api_user": "u", "api_key": "k"}


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"mtn_momo": {"collection": PRODUCT, "disbursement": PRODUCT}}
    values.update(overrides)
    return Settings(**values)


def test_a_complete_configuration_has_no_problems() -> None:
    assert configuration_problems(settings()) == []


def test_without_any_credentials_the_variables_are_named() -> None:
    (problem,) = configuration_problems(Settings())
    assert problem.startswith("MTN_MOMO credentials missing")
    assert "KUNPAY_MTN_MOMO__COLLECTION__API_KEY" in problem
    assert "KUNPAY_MTN_MOMO__DISBURSEMENT__SUBSCRIPTION_KEY" in problem


def test_one_product_is_enough_and_the_other_operations_are_unavailable() -> None:
    only_collection = Settings(mtn_momo={"collection": PRODUCT})  # type: ignore[arg-type]
    assert configuration_problems(only_collection) == []
    available = BACKENDS["MTN_MOMO"].available(only_collection)
    assert Capability.COLLECT in available
    assert Capability.DISBURSE not in available
    assert Capability.REFUND not in available
    reason = rejection_for(only_collection, "MTN_CAMEROON", Capability.DISBURSE, "XAF", "MTN")
    assert reason is not None
    assert "cannot disburse here" in reason


@pytest.mark.parametrize(
    ("provider", "currency", "operator", "expected"),
    [
        ("MTN_CAMEROON", "XAF", "MTN", None),
        ("MTN_CAMEROON", "EUR", "MTN", "UNSUPPORTED: MTN_MOMO here accepts XAF, not EUR"),
        (
            "MTN_CAMEROON",
            "XAF",
            "ORANGE",
            "UNSUPPORTED: MTN_CAMEROON (MTN_MOMO) does not reach ORANGE",
        ),
        ("FLUTTERWAVE", "XAF", "MTN", "UNSUPPORTED: provider key FLUTTERWAVE is not configured"),
    ],
)
def test_what_this_worker_cannot_do_is_explained(
    provider: str, currency: str, operator: str, expected: str | None
) -> None:
    reason = rejection_for(settings(), provider, Capability.COLLECT, currency, operator)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert reason.startswith(expected)


def test_a_refund_through_a_backend_that_cannot_refund_names_the_keys_that_can() -> None:
    reason = backend_rejection(settings(), "NOPE", Capability.REFUND)
    assert reason == "UNSUPPORTED: backend NOPE is not configured on this worker"
    assert backend_rejection(settings(), "MTN_MOMO", Capability.REFUND) is None
