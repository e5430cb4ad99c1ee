from __future__ import annotations

import pytest

from kunpay_worker.domain.schedule import next_poll_delay, retry_delay, tier_for, to_ms

SCHEDULE = [15, 30, 60, 120, 240, 480]


@pytest.mark.parametrize(
    ("checks_done", "delay"),
    [(0, 15), (1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, None), (50, None)],
)
def test_the_poll_schedule_backs_off_then_hands_over_to_the_janitor(
    checks_done: int, delay: float | None
) -> None:
    assert next_poll_delay(checks_done, SCHEDULE) == delay


@pytest.mark.parametrize(
    ("wanted_ms", "tier"),
    [(1, 200), (200, 200), (201, 400), (399, 400), (1600, 1600), (5000, 1600)],
)
def test_a_delay_goes_to_the_smallest_tier_that_waits_long_enough(
    wanted_ms: int, tier: int
) -> None:
    assert tier_for(wanted_ms, [200, 400, 800, 1600]) == tier


def test_no_tiers_is_an_error() -> None:
    with pytest.raises(ValueError, match="tiers"):
        tier_for(5, [])


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1), (2, 5), (3, 30), (4, 300), (9, 300)])
def test_retry_backoff_grows_then_stays_at_the_longest(attempt: int, delay: float) -> None:
    assert retry_delay(attempt, [1, 5, 30, 300]) == delay


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempts"):
        retry_delay(0, [1])


@pytest.mark.parametrize(("seconds", "ms"), [(0.2, 200), (15, 15_000), (0.0001, 1), (0, 1)])
def test_seconds_round_up_to_whole_milliseconds(seconds: float, ms: int) -> None:
    assert to_ms(seconds) == ms
