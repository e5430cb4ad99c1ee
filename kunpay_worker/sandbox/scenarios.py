"""Magic phone numbers: the sandbox's outcome for a payer number (Cameroon MTN range).

Any other number succeeds. The README lists this table; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["MAGIC_NUMBERS", "Behaviour", "Scenario", "scenario_for"]


class Behaviour(StrEnum):
    SUCCEED = "succeed"  # accepted, SUCCESSFUL once settled
    FAIL = "fail"  # accepted, FAILED with the reason once settled
    PENDING = "pending"  # accepted, stays PENDING forever
    ERROR_ONCE = "error_once"  # first request per reference: 500, not registered; then accepted
    ERROR_AFTER_ACCEPT = "error_after_accept"  # registered, but the answer is a 500
    ERROR_ALWAYS = "error_always"  # 500 and never registered
    HOLD = "hold"  # registered on arrival; the answer waits until released
    SLOW = "slow"  # registered; answers after --slow-seconds (beyond a client's timeout)


@dataclass(frozen=True, slots=True)
class Scenario:
    behaviour: Behaviour
    reason: str | None = None
    description: str = ""


MAGIC_NUMBERS: dict[str, Scenario] = {
    "670000000": Scenario(Behaviour.SUCCEED, description="succeeds (as does any unlisted number)"),
    "670000001": Scenario(Behaviour.FAIL, "PAYER_NOT_FOUND", "fails: PAYER_NOT_FOUND"),
    "670000002": Scenario(Behaviour.FAIL, "NOT_ENOUGH_FUNDS", "fails: NOT_ENOUGH_FUNDS"),
    "670000003": Scenario(Behaviour.FAIL, "APPROVAL_REJECTED", "fails: APPROVAL_REJECTED"),
    "670000004": Scenario(Behaviour.FAIL, "EXPIRED", "fails: EXPIRED (payer never approved)"),
    "670000005": Scenario(Behaviour.FAIL, "PAYER_LIMIT_REACHED", "fails: PAYER_LIMIT_REACHED"),
    "670000006": Scenario(Behaviour.FAIL, "NOT_ALLOWED", "fails: NOT_ALLOWED"),
    "670000007": Scenario(
        Behaviour.FAIL, "INTERNAL_PROCESSING_ERROR", "fails: INTERNAL_PROCESSING_ERROR"
    ),
    "670000008": Scenario(
        Behaviour.FAIL, "COULD_NOT_PERFORM_TRANSACTION", "fails: COULD_NOT_PERFORM_TRANSACTION"
    ),
    "670000009": Scenario(Behaviour.FAIL, "SERVICE_UNAVAILABLE", "fails: SERVICE_UNAVAILABLE"),
    "670000010": Scenario(Behaviour.PENDING, description="stays PENDING forever"),
    "670000020": Scenario(
        Behaviour.ERROR_ONCE,
        description="first request to pay answers 500 and is not registered; a resend succeeds",
    ),
    "670000021": Scenario(
        Behaviour.ERROR_AFTER_ACCEPT,
        description="registered (then succeeds) but the request to pay answers 500",
    ),
    "670000022": Scenario(Behaviour.ERROR_ALWAYS, description="every request to pay answers 500"),
    "670000030": Scenario(
        Behaviour.HOLD,
        description="registered (then succeeds); the reply is held until "
        "POST /_sandbox/mtn/release",
    ),
    "670000031": Scenario(
        Behaviour.SLOW,
        description="registered (then succeeds); the reply comes after --slow-seconds",
    ),
}


def scenario_for(msisdn: str) -> Scenario:
    """``msisdn`` as providers send it ("237670000001"): the last nine digits pick the scenario."""
    return MAGIC_NUMBERS.get(msisdn[-9:], MAGIC_NUMBERS["670000000"])
