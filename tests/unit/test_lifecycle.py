from __future__ import annotations

import itertools

import pytest

from kunpay_sdk.contracts import EventType, Status, TransactionType
from kunpay_worker.domain.lifecycle import ALLOWED, IllegalTransition, plan_transition

S = Status
C = TransactionType.COLLECTION
R = TransactionType.REFUND

# (kind, current, new) -> event emitted; every pair not listed here must be refused.
ALLOWED_TABLE = {
    (C, None, S.PENDING): EventType.INITIATED,
    (C, None, S.REJECTED): EventType.REJECTED,
    (C, S.PENDING, S.COMPLETED): EventType.SUCCEEDED,
    (C, S.PENDING, S.FAILED): EventType.FAILED,
    (C, S.COMPLETED, S.REFUNDED): EventType.REFUNDED,
    (C, S.COMPLETED, S.REFUND_FAILED): EventType.REFUND_FAILED,
    (C, S.FAILED, S.FAILED): None,
    (C, S.FAILED, S.COMPLETED): EventType.SUCCEEDED,
    (C, S.REFUND_FAILED, S.REFUND_FAILED): None,
    (C, S.REFUND_FAILED, S.REFUNDED): EventType.REFUNDED,
    (R, S.PENDING, S.COMPLETED): EventType.REFUNDED,
    (R, S.PENDING, S.FAILED): EventType.REFUND_FAILED,
}

STATES: list[Status | None] = [None, *Status]


@pytest.mark.parametrize(("current", "new"), list(itertools.product(STATES, list(Status))))
def test_every_collection_transition_is_allowed_or_refused_as_the_table_says(
    current: Status | None, new: Status
) -> None:
    expected = ALLOWED_TABLE.get((C, current, new), "refused")
    if expected == "refused":
        with pytest.raises(IllegalTransition):
            plan_transition(C, current, new)
    else:
        assert plan_transition(C, current, new).event == expected


def test_the_allowed_map_matches_the_table() -> None:
    pairs = {(cur, new) for cur, news in ALLOWED.items() for new in news}
    assert pairs == {(cur, new) for kind, cur, new in ALLOWED_TABLE if kind is C}


def test_late_success_of_a_failed_payment_is_flagged_late() -> None:
    transition = plan_transition(C, S.FAILED, S.COMPLETED)
    assert transition.event is EventType.SUCCEEDED
    assert transition.late
    assert not plan_transition(C, S.PENDING, S.COMPLETED).late


@pytest.mark.parametrize(
    ("new", "event"), [(S.COMPLETED, EventType.REFUNDED), (S.FAILED, EventType.REFUND_FAILED)]
)
def test_a_refund_transaction_never_announces_payment_succeeded(
    new: Status, event: EventType
) -> None:
    assert plan_transition(R, S.PENDING, new).event is event


@pytest.mark.parametrize("terminal", [S.REFUNDED, S.REJECTED])
def test_terminal_states_go_nowhere(terminal: Status) -> None:
    for new in Status:
        with pytest.raises(IllegalTransition):
            plan_transition(C, terminal, new)


def test_rejected_can_only_be_a_first_status() -> None:
    for current in Status:
        with pytest.raises(IllegalTransition):
            plan_transition(C, current, S.REJECTED)
