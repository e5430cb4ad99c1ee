"""The transaction lifecycle (the old package's, kept).

``PENDING → COMPLETED | FAILED``, ``COMPLETED → REFUNDED | REFUND_FAILED``,
``FAILED → FAILED | COMPLETED`` (a provider's late success), ``REFUND_FAILED → REFUND_FAILED |
REFUNDED``. A transaction starts ``PENDING`` or ``REJECTED``; ``REFUNDED`` and ``REJECTED`` are
terminal. A move to the same status only records a changed reason and emits no event.
"""

from __future__ import annotations

from dataclasses import dataclass

from kunpay_sdk.contracts import EventType, Status, TransactionType

__all__ = ["ALLOWED", "IllegalTransition", "Transition", "plan_transition"]

ALLOWED: dict[Status | None, frozenset[Status]] = {
    None: frozenset({Status.PENDING, Status.REJECTED}),
    Status.PENDING: frozenset({Status.COMPLETED, Status.FAILED}),
    Status.COMPLETED: frozenset({Status.REFUNDED, Status.REFUND_FAILED}),
    Status.FAILED: frozenset({Status.FAILED, Status.COMPLETED}),
    Status.REFUND_FAILED: frozenset({Status.REFUND_FAILED, Status.REFUNDED}),
    Status.REFUNDED: frozenset(),
    Status.REJECTED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, current: Status | None, new: Status) -> None:
        super().__init__(f"a transaction cannot go from {current or 'nothing'} to {new}")
        self.current = current
        self.new = new


@dataclass(frozen=True, slots=True)
class Transition:
    current: Status | None
    new: Status
    event: EventType | None  # None: a same-status reason update, no event
    late: bool = False


def plan_transition(kind: TransactionType, current: Status | None, new: Status) -> Transition:
    """Check ``current → new`` and say which event announces it; raise IllegalTransition."""
    if new not in ALLOWED[current]:
        raise IllegalTransition(current, new)
    if current == new:
        return Transition(current, new, None)
    if current is None:
        event = EventType.INITIATED if new is Status.PENDING else EventType.REJECTED
        return Transition(current, new, event)
    if new is Status.COMPLETED:
        if kind is TransactionType.REFUND:
            return Transition(current, new, EventType.REFUNDED)
        return Transition(current, new, EventType.SUCCEEDED, late=current is Status.FAILED)
    if new is Status.FAILED:
        event = EventType.REFUND_FAILED if kind is TransactionType.REFUND else EventType.FAILED
        return Transition(current, new, event)
    if new is Status.REFUNDED:
        return Transition(current, new, EventType.REFUNDED)
    return Transition(current, new, EventType.REFUND_FAILED)
