"""Magic phone numbers: the sandbox's outcome for a number, the same for every provider.

``6700000NN`` (an MTN number) and ``6900000NN`` (an Orange number) behave as row ``NN`` says;
any other number succeeds. Failures are named here once (``failure``) and each provider's
simulator answers with its own code for them. The README lists this table; a test keeps the two
in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["MAGIC_NUMBERS", "Behaviour", "Scenario", "scenario_for"]


class Behaviour(StrEnum):
    SUCCEED = "succeed"  # accepted, SUCCESSFUL once settled
    FAIL = "fail"  # accepted, FAILED with the failure once settled
    PENDING = "pending"  # accepted, stays PENDING forever
    LATE_SUCCESS = "late_success"  # first payment from the number: FAILED, then SUCCESSFUL later
    ERROR_ONCE = "error_once"  # first request per reference: 500, not registered; then accepted
    ERROR_AFTER_ACCEPT = "error_after_accept"  # registered, but the answer is a 500
    ERROR_ALWAYS = "error_always"  # 500 and never registered
    THROTTLE_ONCE = "throttle_once"  # first request per reference: 429 Retry-After 1
    HOLD = "hold"  # registered on arrival; the answer waits until released
    SLOW = "slow"  # registered; answers after --slow-seconds (beyond a client's timeout)
    INACTIVE = "inactive"  # the account holder check says the account is not active
    REFUND_FAILS = "refund_fails"  # payments succeed; refunds of them fail


@dataclass(frozen=True, slots=True)
class Scenario:
    behaviour: Behaviour
    failure: str | None = None
    description: str = ""


MAGIC_NUMBERS: dict[str, Scenario] = {
    "00": Scenario(Behaviour.SUCCEED, description="succeeds (as does any unlisted number)"),
    "01": Scenario(
        Behaviour.FAIL, "PAYER_NOT_FOUND", "fails: PAYER_NOT_FOUND (payouts: PAYEE_NOT_FOUND)"
    ),
    "02": Scenario(Behaviour.FAIL, "NOT_ENOUGH_FUNDS", "fails: NOT_ENOUGH_FUNDS"),
    "03": Scenario(Behaviour.FAIL, "APPROVAL_REJECTED", "fails: APPROVAL_REJECTED"),
    "04": Scenario(Behaviour.FAIL, "EXPIRED", "fails: EXPIRED (the payer never approved)"),
    "05": Scenario(Behaviour.FAIL, "PAYER_LIMIT_REACHED", "fails: PAYER_LIMIT_REACHED"),
    "06": Scenario(Behaviour.FAIL, "NOT_ALLOWED", "fails: NOT_ALLOWED"),
    "07": Scenario(Behaviour.FAIL, "INTERNAL_PROCESSING_ERROR", "fails: INTERNAL_PROCESSING_ERROR"),
    "08": Scenario(
        Behaviour.FAIL, "COULD_NOT_PERFORM_TRANSACTION", "fails: COULD_NOT_PERFORM_TRANSACTION"
    ),
    "09": Scenario(Behaviour.FAIL, "SERVICE_UNAVAILABLE", "fails: SERVICE_UNAVAILABLE"),
    "10": Scenario(Behaviour.PENDING, description="stays PENDING forever"),
    "11": Scenario(
        Behaviour.LATE_SUCCESS,
        "EXPIRED",
        "first payment from the number fails (EXPIRED), then turns SUCCESSFUL after "
        "--late-seconds; later payments from it succeed",
    ),
    "20": Scenario(
        Behaviour.ERROR_ONCE,
        description="first request per reference answers 500 and is not registered; a resend "
        "succeeds",
    ),
    "21": Scenario(
        Behaviour.ERROR_AFTER_ACCEPT,
        description="registered (then succeeds) but the request answers 500",
    ),
    "22": Scenario(Behaviour.ERROR_ALWAYS, description="every request answers 500"),
    "23": Scenario(
        Behaviour.THROTTLE_ONCE,
        description="first request per reference answers 429 with Retry-After: 1",
    ),
    "30": Scenario(
        Behaviour.HOLD,
        description="registered (then succeeds); the reply is held until POST /_sandbox/release",
    ),
    "31": Scenario(
        Behaviour.SLOW,
        description="registered (then succeeds); the reply comes after --slow-seconds",
    ),
    "40": Scenario(Behaviour.INACTIVE, description="the account holder check says inactive"),
    "50": Scenario(
        Behaviour.REFUND_FAILS,
        "NOT_ALLOWED",
        "payments succeed; refunds of them fail (NOT_ALLOWED)",
    ),
}

_PREFIXES = ("6700000", "6900000")


def scenario_for(msisdn: str) -> Scenario:
    """``msisdn`` with or without country code and '+': the last nine digits pick the row."""
    national = msisdn[-9:]
    if national[:7] in _PREFIXES and national[7:] in MAGIC_NUMBERS:
        return MAGIC_NUMBERS[national[7:]]
    return MAGIC_NUMBERS["00"]
