"""``kunpay-worker broker-setup``: kunpay's RabbitMQ users, through the management HTTP API.

Three kinds of broker users (DESIGN.md §8):

- **the worker** (user, password and vhost from ``KUNPAY_AMQP_URL``): everything on its vhost,
  and the ``impersonator`` tag, so that a command it retries keeps the app's ``user_id``;
- **apps** (``KUNPAY_BROKER_SETUP__APPS``): publish commands and requests, declare and read their
  own ``app.<name>.*`` queues, read events; outcomes only under their own name (a topic
  permission on ``kunpay.outcomes``). Nothing else: no events to publish, no dead letters, no
  default exchange (which reaches every queue);
- **operators** (``KUNPAY_BROKER_SETUP__OPERATOR_USER``): read the dead-letter queue (and the
  management UI), nothing to publish.

Every call is a PUT, so running it again converges (passwords are reset to the configured ones).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from kunpay_sdk import topology
from kunpay_worker.settings import Settings

__all__ = ["BrokerSetupError", "Grant", "app_grant", "plan", "run"]


class BrokerSetupError(Exception):
    pass


@dataclass(frozen=True)
class Grant:
    """One broker user: its tags, vhost permissions (regexes) and topic permissions."""

    user: str
    password: str
    tags: str
    configure: str
    write: str
    read: str
    topics: tuple[tuple[str, str, str], ...] = ()  # (exchange, write, read)


def _any(*names: str) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def app_grant(name: str, password: str) -> Grant:
    topology.validate_app_name(name)
    own = re.escape(f"app.{name}.") + ".*"
    return Grant(
        user=name,
        password=password,
        tags="",
        # Its subscriber queues (and their dead-letter queues), and per-client outcome queues.
        configure=f"^{own}$",
        write="^("
        + "|".join(
            [
                re.escape(topology.COMMANDS_EXCHANGE),
                re.escape(topology.REQUESTS_EXCHANGE),
                own,  # binding its queues needs write on them
            ]
        )
        + ")$",
        read="^("
        + "|".join(
            [
                re.escape(topology.EVENTS_EXCHANGE),
                re.escape(topology.EVENTS_LOG_QUEUE),
                re.escape(topology.OUTCOMES_EXCHANGE),
                own,
            ]
        )
        + ")$",
        # Bindings on kunpay.outcomes only under its own name: no peeking at other apps.
        topics=((topology.OUTCOMES_EXCHANGE, "^$", "^" + re.escape(f"{name}.")),),
    )


def plan(settings: Settings) -> tuple[str, list[Grant]]:
    """The vhost and the users to create, from the settings."""
    url = urlsplit(settings.amqp_url.get_secret_value())
    vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
    worker_user, worker_password = unquote(url.username or ""), unquote(url.password or "")
    if not worker_user or not worker_password:
        raise BrokerSetupError("KUNPAY_AMQP_URL must name the worker's user and password")
    if worker_user == "guest":
        raise BrokerSetupError(
            "KUNPAY_AMQP_URL names guest: give the worker a user of its own "
            "(guest only connects from localhost, and has no impersonator tag)"
        )
    grants = [
        Grant(worker_user, worker_password, "impersonator", ".*", ".*", ".*"),
    ]
    setup = settings.broker_setup
    if setup.operator_password is not None:
        grants.append(
            Grant(
                setup.operator_user,
                setup.operator_password.get_secret_value(),
                "management",
                "^$",
                "^$",
                _any(topology.DEAD_LETTER_QUEUE),
            )
        )
    taken = {worker_user, setup.admin_user}
    if setup.operator_password is not None and setup.operator_user in taken:
        raise BrokerSetupError(
            f"the operator user {setup.operator_user!r} is the worker's or the admin's: "
            "give it a name of its own"
        )
    if worker_user == setup.admin_user:
        raise BrokerSetupError("the worker's user must not be the broker admin")
    for name, password in sorted(setup.apps.items()):
        if name in (worker_user, setup.operator_user, setup.admin_user):
            raise BrokerSetupError(
                f"app {name!r} has the name of the worker, operator or admin user"
            )
        grants.append(app_grant(name, password.get_secret_value()))
    return vhost, grants


async def run(settings: Settings, *, timeout: float = 10.0) -> list[str]:
    """Create or update the vhost and the users; returns what was done, line by line."""
    vhost, grants = plan(settings)
    setup = settings.broker_setup
    api = setup.management_url.rstrip("/") + "/api"
    auth = aiohttp.encode_basic_auth(setup.admin_user, setup.admin_password.get_secret_value())
    v = quote(vhost, safe="")
    done: list[str] = []
    async with aiohttp.ClientSession(
        headers={"Authorization": auth}, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as http:

        async def put(path: str, body: dict[str, str]) -> None:
            try:
                async with http.put(api + path, json=body) as resp:
                    if resp.status not in (200, 201, 204):
                        text = (await resp.text())[:300]
                        raise BrokerSetupError(f"PUT {path}: HTTP {resp.status} {text}")
            except aiohttp.ClientError as exc:
                raise BrokerSetupError(
                    f"cannot reach RabbitMQ's management API at {setup.management_url}: {exc} "
                    "(is the rabbitmq_management plugin enabled?)"
                ) from exc

        await put(f"/vhosts/{v}", {})
        done.append(f"vhost {vhost}")
        for grant in grants:
            u = quote(grant.user, safe="")
            await put(f"/users/{u}", {"password": grant.password, "tags": grant.tags})
            await put(
                f"/permissions/{v}/{u}",
                {"configure": grant.configure, "write": grant.write, "read": grant.read},
            )
            for exchange, write, read in grant.topics:
                await put(
                    f"/topic-permissions/{v}/{u}",
                    {"exchange": exchange, "write": write, "read": read},
                )
            done.append(f"user {grant.user} ({grant.tags or 'no tags'})")
    return done
