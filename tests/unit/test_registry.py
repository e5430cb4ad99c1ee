from __future__ import annotations

from typing import Any

import pytest

from kunpay_worker.providers.registry import configuration_problems, rejection_for
from kunpay_worker.settings import Settings

CREDENTIALS: dict[str, Any] = {
    "collection": {"subscription_key": "s", "api_user": "u", "api_key": "k"},
}


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"mtn_momo": CREDENTIALS}
    values.update(overrides)
    return Settings(**values)


def test_a_complete_configuration_has_no_problems() -> None:
    assert configuration_problems(settings()) == []


def test_missing_credentials_are_named_by_their_variables() -> None:
    problems = configuration_problems(Settings())
    assert problems == [
        "MTN_MOMO collection credentials missing: KUNPAY_MTN_MOMO__COLLECTION__SUBSCRIPTION_KEY, "
        "KUNPAY_MTN_MOMO__COLLECTION__API_USER, KUNPAY_MTN_MOMO__COLLECTION__API_KEY"
    ]


def test_a_key_mapped_to_an_unimplemented_backend_stops_start_up() -> None:
    problems = configuration_problems(settings(providers={"PAWAPAY": "PAWAPAY"}))
    assert problems == ["PAWAPAY → PAWAPAY: this backend is not implemented yet"]


@pytest.mark.parametrize(
    ("provider", "currency", "expected"),
    [
        ("MTN_CAMEROON", "XAF", None),
        ("MTN_CAMEROON", "EUR", "MTN_MOMO here accepts XAF, not EUR"),
        ("PAWAPAY", "XAF", "provider key PAWAPAY is not configured on this worker"),
    ],
)
def test_what_this_worker_cannot_do_is_explained(
    provider: str, currency: str, expected: str | None
) -> None:
    reason = rejection_for(settings(), provider, "collect", currency)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert reason.startswith(expected)


def test_an_operation_the_backend_cannot_do_names_the_keys_that_can() -> None:
    reason = rejection_for(settings(), "MTN_CAMEROON", "disburse", "XAF")
    assert reason == "MTN_CAMEROON (MTN_MOMO) cannot disburse; provider keys that can: none"
