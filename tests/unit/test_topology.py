from __future__ import annotations

import pytest

from kunpay_sdk import topology


def test_delay_tiers_are_one_queue_per_ttl_for_each_target() -> None:
    shape = topology.Topology(poll_delays_ms=(200, 400), command_delays_ms=(1000,))
    assert list(shape.delay_tiers()) == [("poll", 200), ("poll", 400), ("commands", 1000)]
    assert topology.delay_queue("poll", 200) == "kunpay.delay.poll.200"


def test_work_queues_dead_letter_at_least_once() -> None:
    args = topology._work_queue_arguments(20)
    assert args["x-queue-type"] == "quorum"
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-overflow"] == "reject-publish"  # required by at-least-once
    assert args["x-dead-letter-exchange"] == topology.DEAD_LETTER_EXCHANGE
    assert "x-expires" not in args  # quorum queues with x-expires get deleted


def test_subscriber_queues_dead_letter_into_their_own_queue() -> None:
    args = topology.subscriber_queue_arguments("shop", "orders", 5)
    assert args["x-dead-letter-routing-key"] == "app.shop.orders.dead-letter"
    assert args["x-delivery-limit"] == 5


@pytest.mark.parametrize("name", ["shop", "shop_2", "a-b"])
def test_good_app_names(name: str) -> None:
    assert topology.validate_app_name(name) == name


@pytest.mark.parametrize("name", ["", "shop.eu", "shop#", "a*", "x" * 65, "é"])
def test_app_names_that_would_break_routing_keys_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="app name"):
        topology.validate_app_name(name)


def test_outcome_routing_keys_are_app_then_transaction() -> None:
    assert topology.outcome_routing_key("shop", "t-1") == "shop.t-1"
