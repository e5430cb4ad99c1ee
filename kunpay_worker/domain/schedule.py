"""When to look again: poll schedule, delay tiers and command retry backoff (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["next_poll_delay", "retry_delay", "tier_for", "to_ms"]


def to_ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def next_poll_delay(checks_done: int, schedule: Sequence[float]) -> float | None:
    """Seconds until the next check after ``checks_done`` checks; None when the schedule is
    spent (the janitor takes over)."""
    if checks_done < len(schedule):
        return schedule[checks_done]
    return None


def tier_for(delay_ms: int, tiers_ms: Sequence[int]) -> int:
    """The smallest delay tier that waits at least ``delay_ms``, else the longest tier.

    A waiter that needs longer than the longest tier simply checks again when it arrives.
    """
    if not tiers_ms:
        raise ValueError("no delay tiers configured")
    candidates = [t for t in tiers_ms if t >= delay_ms]
    return min(candidates) if candidates else max(tiers_ms)


def retry_delay(attempt: int, tiers: Sequence[float]) -> float:
    """Backoff for the ``attempt``-th retry (1-based) of a transiently failing message."""
    if attempt < 1:
        raise ValueError("attempts start at 1")
    return tiers[min(attempt, len(tiers)) - 1]
