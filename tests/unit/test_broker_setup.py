"""The broker users `kunpay-worker broker-setup` creates: what each may touch."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from kunpay_sdk import topology
from kunpay_worker.broker_setup import BrokerSetupError, app_grant, plan
from kunpay_worker.settings import BrokerSetupSettings, Settings


def settings(url: str = "amqp://kw:pw@rabbit:5672/payments", **setup: object) -> Settings:
    return Settings(
        amqp_url=SecretStr(url),
        broker_setup=BrokerSetupSettings.model_validate(setup),
    )


def matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def test_an_app_writes_commands_and_requests_and_its_own_queues_only() -> None:
    grant = app_grant("shop", "pw")
    for name in (topology.COMMANDS_EXCHANGE, topology.REQUESTS_EXCHANGE, "app.shop.orders"):
        assert matches(grant.write, name), name
    for name in (
        "amq.default",
        topology.EVENTS_EXCHANGE,
        topology.DEAD_LETTER_EXCHANGE,
        topology.POLL_QUEUE,
        "app.shopx.orders",
        "app.other.orders",
        "kunpay.commandsX",
    ):
        assert not matches(grant.write, name), name


def test_an_app_reads_events_and_its_own_queues_but_no_dead_letters() -> None:
    grant = app_grant("shop", "pw")
    for name in (topology.EVENTS_EXCHANGE, topology.EVENTS_LOG_QUEUE, topology.OUTCOMES_EXCHANGE):
        assert matches(grant.read, name), name
    for name in (topology.DEAD_LETTER_QUEUE, topology.COMMANDS_QUEUE, "app.other.orders"):
        assert not matches(grant.read, name), name
    assert not matches(grant.configure, "kunpay.events")
    assert matches(grant.configure, "app.shop.client.0f3a")
    ((exchange, write, read),) = grant.topics
    assert exchange == topology.OUTCOMES_EXCHANGE
    assert matches(read, "shop.#")
    assert not matches(read, "shopx.#")
    assert not matches(write, "shop.1")


def test_the_plan_takes_the_worker_and_vhost_from_the_amqp_url() -> None:
    vhost, grants = plan(
        settings(operator_password="ops", apps={"shop": "s", "b2b": "b"}),
    )
    assert vhost == "payments"
    assert [(g.user, g.tags) for g in grants] == [
        ("kw", "impersonator"),
        ("kunpay-operator", "management"),
        ("b2b", ""),
        ("shop", ""),
    ]
    assert plan(settings("amqp://kw:pw@rabbit:5672/"))[0] == "/"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://guest:guest@localhost:5672/", "guest"),
        ("amqp://rabbit:5672/", "user and password"),
    ],
)
def test_a_worker_url_without_its_own_user_is_refused(url: str, message: str) -> None:
    with pytest.raises(BrokerSetupError, match=message):
        plan(settings(url))


def test_an_app_named_like_the_worker_is_refused() -> None:
    with pytest.raises(BrokerSetupError, match="name of the worker"):
        plan(settings(apps={"kw": "x"}))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"operator_user": "kw", "operator_password": "x"}, "operator user"),
        ({"admin_user": "kw"}, "admin"),
        ({"apps": {"guest": "x"}}, "admin"),
    ],
)
def test_users_that_would_overwrite_each_other_are_refused(
    setup: dict[str, object], message: str
) -> None:
    with pytest.raises(BrokerSetupError, match=message):
        plan(settings(**setup))
