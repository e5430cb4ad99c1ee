"""The container files, checked against the code they configure.

Docker does not run where the tests run, so ``Dockerfile`` and ``docker-compose.yml`` are parsed
and held to the settings (every ``KUNPAY_*`` name is a setting), the CLI (every command and
option exists and parses), and the servers (ports, routes, callback URLs): a misspelt variable or
a port that no longer matches fails here rather than at ``docker compose up``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import pytest
import typer
import typer.core
import yaml
from aiohttp import web
from packaging.specifiers import SpecifierSet

from kunpay_worker.cli import app as cli_app
from kunpay_worker.cli import main
from kunpay_worker.messaging import Publisher
from kunpay_worker.providers.registry import configuration_problems
from kunpay_worker.sandbox import SandboxConfig, build_app
from kunpay_worker.settings import BACKENDS, ServerSettings, Settings
from kunpay_worker.webhooks import PATHS, Webhooks
from tests.unit.test_readme import env_names

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE_TEXT = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = [
    line.strip()
    for line in (ROOT / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

SETTINGS = set(env_names(Settings))
KUNPAY_NAME = re.compile(r"\bKUNPAY_[A-Z0-9]+(?:_+[A-Z0-9]+)*")
CLI = typer.main.get_command(cli_app)
assert isinstance(CLI, typer.core.TyperGroup)
COMMANDS = CLI.commands
DEFAULT_SERVER_PORT = ServerSettings().port


# -- parsing -------------------------------------------------------------------------------------


def interpolate(value: str) -> str:
    """What compose makes of ``${VAR:-default}`` with nothing set: what ``docker compose up``
    gets out of the box. A variable without a default fails (``up`` would need it set)."""

    def default(match: re.Match[str]) -> str:
        parsed = re.fullmatch(r"(\w+)(?::?-(.*))?", match[1], re.DOTALL)
        if parsed is None or parsed[2] is None:
            raise AssertionError(f"${{{match[1]}}} has no default: write ${{VAR:-dev-default}}")
        return parsed[2]

    escaped = value.replace("$$", "\0")
    result = re.sub(r"\$\{([^}]*)\}", default, escaped)
    if "$" in result:
        raise AssertionError(f"{value!r}: a bare $VAR (write ${{VAR:-default}}, or $$ for a $)")
    return result.replace("\0", "$")


def as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def environment(service: dict[str, Any], *, raw: bool = False) -> dict[str, str]:
    """A service's environment (mapping or ``KEY=value`` list), interpolated unless raw."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    pairs = {key: as_text(value) for key, value in env.items() if value is not None}
    return pairs if raw else {key: interpolate(value) for key, value in pairs.items()}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        form = json.loads(self.args)
        assert isinstance(form, list), f"{self.keyword} {self.args}: not the exec (JSON) form"
        return [str(word) for word in form]


def dockerfile(text: str) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped."""
    instructions = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in instructions if instruction.keyword == keyword]
    assert found, f"the image's final stage has no {keyword}"
    return found[-1]  # the last one wins, as in Docker


IMAGE = final_stage(dockerfile(DOCKERFILE_TEXT))


def healthcheck_command(instruction: Instruction) -> list[str]:
    """``HEALTHCHECK [--option=value ...] CMD ...`` → the command."""
    parsed = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.+)", instruction.args, re.DOTALL)
    assert parsed, f"HEALTHCHECK {instruction.args}: no CMD"
    rest = parsed[1].strip()
    return Instruction("CMD", rest).exec_form() if rest.startswith("[") else shlex.split(rest)


def kunpay_services() -> dict[str, dict[str, Any]]:
    """The services running the image built from this repository's Dockerfile."""
    return {name: service for name, service in SERVICES.items() if "build" in service}


def argv(service: dict[str, Any], *, raw: bool = False) -> list[str]:
    """The kunpay-worker arguments a service runs (its command, else the image's CMD),
    interpolated unless raw."""
    command = service.get("command")
    if command is None:
        return only(IMAGE, "CMD").exec_form()
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    return words if raw else [interpolate(word) for word in words]


def option(args: list[str], name: str) -> str | None:
    for i, word in enumerate(args):
        if word == name and i + 1 < len(args):
            return args[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def container_ports(service: dict[str, Any]) -> list[int]:
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append(int(entry["target"]))
        else:
            ports.append(int(interpolate(str(entry)).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def url_of(command: list[str]) -> str:
    found = re.search(r"https?://[^'\"\s]+", " ".join(command))
    assert found, f"no URL in the healthcheck {command}"
    return found[0]


# -- the checks (return what is wrong, so tests can show they fail) ---------------------------


def unknown_settings(text: str) -> list[str]:
    return sorted({name for name in KUNPAY_NAME.findall(text) if name not in SETTINGS})


def command_problems(words: list[str]) -> list[str]:
    """Is ``kunpay-worker <words>`` a command of the CLI, with options it has and values it
    parses? (click parses the arguments without running the command)."""
    name, *args = words
    command = COMMANDS.get(name)
    if command is None:
        return [f"`kunpay-worker {name}` is not a command of kunpay_worker.cli: {sorted(COMMANDS)}"]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    problems = [
        f"`kunpay-worker {name}` has no option {word.split('=')[0]} (it has {sorted(known)})"
        for word in args
        if word.startswith("--") and word.split("=")[0] not in known
    ]
    if not problems:
        try:
            command.make_context(name, list(args))
        except Exception as exc:
            problems.append(f"`kunpay-worker {shlex.join(words)}`: {exc}")
    return problems


def require_command(name: str) -> None:
    if name == "broker-setup" and name not in COMMANDS:
        pytest.skip(
            "`kunpay-worker broker-setup` is not in kunpay_worker.cli yet (issue 5, being "
            "written): remove this skip once it lands"
        )


def routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }


def worker_routes() -> set[tuple[str, str]]:
    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {}

    app = Webhooks(Settings(), cast(Publisher, object()), ready, None).app()
    return routes(app)


def sandbox_routes() -> set[tuple[str, str]]:
    app = build_app(SandboxConfig())
    return routes(app)


@pytest.fixture
def no_kunpay_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Settings from a service's environment only, not from the one the tests run in."""
    for name in list(os.environ):
        if name.startswith("KUNPAY_"):
            monkeypatch.delenv(name)
    return monkeypatch


def settings_of(monkeypatch: pytest.MonkeyPatch, service: str) -> Settings:
    for name, value in environment(SERVICES[service]).items():
        monkeypatch.setenv(name, value)
    return Settings()


# -- names and commands --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["docker-compose.yml", "Dockerfile"])
def test_every_kunpay_variable_in_the_container_files_is_a_setting(path: str) -> None:
    unknown = unknown_settings((ROOT / path).read_text())
    assert not unknown, (
        f"{path} names {unknown}, which kunpay_worker.settings.Settings does not read "
        "(pydantic-settings ignores unknown KUNPAY_* variables silently)"
    )


def test_a_misspelt_variable_is_caught() -> None:
    misspelt = COMPOSE_TEXT.replace("KUNPAY_SERVER__PORT", "KUNPAY_SERVER_PORT")
    assert unknown_settings(misspelt) == ["KUNPAY_SERVER_PORT"]


@pytest.mark.parametrize("service", sorted(kunpay_services()))
def test_every_kunpay_service_runs_a_command_of_the_cli_with_its_options(service: str) -> None:
    words = argv(SERVICES[service])
    require_command(words[0])
    problems = command_problems(words)
    assert not problems, f"service {service}: {problems}"


@pytest.mark.parametrize(
    ("words", "problem"),
    [
        (["sandbox", "--prot", "8900"], "has no option --prot"),
        (["sandbox", "--port", "eighty"], "--port"),
        (["serve"], "is not a command"),
    ],
)
def test_a_wrong_command_or_option_is_caught(words: list[str], problem: str) -> None:
    problems = command_problems(words)
    assert problems
    assert problem in problems[0]


def test_every_kunpay_service_loads_its_settings(no_kunpay_env: pytest.MonkeyPatch) -> None:
    for service in kunpay_services():
        with no_kunpay_env.context() as env:
            settings_of(env, service)  # raises on a malformed value (JSON, URL, number)


# -- the image -----------------------------------------------------------------------------------


def test_the_image_runs_the_console_script_with_run_by_default() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    entrypoint = only(IMAGE, "ENTRYPOINT").exec_form()
    assert entrypoint == ["kunpay-worker"]
    assert entrypoint[0] in scripts, f"{entrypoint[0]} is not a console script of pyproject.toml"
    module, _, function = scripts[entrypoint[0]].partition(":")
    assert getattr(importlib.import_module(module), function) is main
    assert only(IMAGE, "CMD").exec_form() == ["run"]
    assert not command_problems(["run"])


def test_the_image_runs_as_an_unprivileged_user() -> None:
    user = only(IMAGE, "USER").args.split(":")[0]
    assert user not in ("root", "0"), f"USER {user}: the image must not run as root"


def test_the_image_is_python_3_11_slim_as_the_package_requires() -> None:
    base = only(IMAGE, "FROM").args.split()[0]
    assert base.startswith("python:3.11-slim"), base
    assert "3.11" in SpecifierSet(PYPROJECT["project"]["requires-python"])
    bases = {i.args.split()[0] for i in dockerfile(DOCKERFILE_TEXT) if i.keyword == "FROM"}
    assert bases == {base}, f"every stage on the same base, or the venv breaks: {bases}"


def test_the_image_installs_the_worker_extra_and_no_dev_tools() -> None:
    installs = [i.args for i in dockerfile(DOCKERFILE_TEXT) if i.keyword == "RUN"]
    pip = [args for args in installs if "pip install" in args]
    assert pip, "no pip install in the Dockerfile"
    extras = {extra for args in pip for extra in re.findall(r"\.\[([\w,]+)\]", args)}
    assert extras == {"worker"}, f"installs extras {extras}"
    assert "worker" in PYPROJECT["project"]["optional-dependencies"]
    assert not any("dev" in re.findall(r"\[([\w,]+)\]", args) for args in pip)


def test_the_image_copies_every_package_and_what_the_build_reads() -> None:
    copied = {
        word.rstrip("/")
        for i in dockerfile(DOCKERFILE_TEXT)
        if i.keyword == "COPY" and not i.args.startswith("--from")
        for word in i.args.split()[:-1]
    }
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed = packages | {"pyproject.toml", PYPROJECT["project"]["readme"]}
    assert needed <= copied, f"the image does not copy {sorted(needed - copied)}"
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: no such file in the repository"
        excluded = [p for p in DOCKERIGNORE if not p.startswith("!") and fnmatch(path, p)]
        assert not excluded, f"COPY {path}, but .dockerignore excludes it ({excluded})"


def test_the_build_context_leaves_out_local_state_and_secrets() -> None:
    for path in (".venv", ".git", ".env", "kunpay.sqlite3", ".run", ".pytest_cache"):
        assert any(fnmatch(path, p) for p in DOCKERIGNORE), f".dockerignore lets {path} in"


def test_the_image_exposes_the_default_server_port() -> None:
    exposed = [int(p.split("/")[0]) for p in only(IMAGE, "EXPOSE").args.split()]
    assert exposed == [DEFAULT_SERVER_PORT]


def test_the_image_healthcheck_asks_a_route_of_the_worker_on_its_port() -> None:
    command = healthcheck_command(only(IMAGE, "HEALTHCHECK"))
    assert not {"curl", "wget"} & set(command), "slim images have neither curl nor wget"
    url = urlsplit(url_of(command))
    assert ("GET", url.path) in worker_routes(), f"{url.path} is not a route of the worker"
    assert url.path == "/healthz"
    text = " ".join(command)
    fallback = re.search(r"KUNPAY_SERVER__PORT['\"],\s*['\"](\d+)", text)
    port = int(fallback[1]) if fallback else url.port
    assert port == DEFAULT_SERVER_PORT, f"the healthcheck asks port {port}"


# -- the compose file: ports and URLs ---------------------------------------------------------


def test_the_worker_publishes_the_port_it_listens_on() -> None:
    env = environment(SERVICES["worker"])
    port = int(env.get("KUNPAY_SERVER__PORT", DEFAULT_SERVER_PORT))
    assert container_ports(SERVICES["worker"]) == [port]
    assert env.get("KUNPAY_SERVER__HOST", ServerSettings().host) == "0.0.0.0"  # noqa: S104


def test_the_sandbox_listens_where_the_provider_base_urls_point() -> None:
    args = argv(SERVICES["sandbox"])
    sandbox = COMMANDS["sandbox"].make_context("sandbox", args[1:]).params
    assert sandbox["host"] == "0.0.0.0", "the sandbox must listen beyond its container"  # noqa: S104
    env = environment(SERVICES["worker"])
    for backend in BACKENDS:
        url = urlsplit(env[f"KUNPAY_{backend}__BASE_URL"])
        assert (url.hostname, url.port) == ("sandbox", sandbox["port"]), backend
    assert sandbox["port"] in container_ports(SERVICES["sandbox"])


def test_the_sandbox_calls_back_the_worker_with_its_secret() -> None:
    args = argv(SERVICES["sandbox"])
    env = environment(SERVICES["worker"])
    base = env["KUNPAY_PUBLIC_BASE_URL"]
    public = urlsplit(base)
    assert public.hostname == "worker"
    assert public.port == int(env.get("KUNPAY_SERVER__PORT", DEFAULT_SERVER_PORT))
    assert option(args, "--pawapay-callback-url") == base + PATHS["PAWAPAY"]
    assert option(args, "--flutterwave-webhook-url") == base + PATHS["FLUTTERWAVE"]
    raw = environment(SERVICES["worker"], raw=True)["KUNPAY_FLUTTERWAVE__WEBHOOK_SECRET_HASH"]
    sandbox_raw = argv(SERVICES["sandbox"], raw=True)
    assert option(sandbox_raw, "--flutterwave-secret-hash") == raw, "one variable for both ends"
    if env.get("KUNPAY_PAWAPAY__VERIFY_CALLBACKS") == "true":
        assert "--pawapay-sign-callbacks" in args, "the worker verifies; the sandbox must sign"


def test_the_sandbox_healthcheck_asks_a_route_of_the_sandbox() -> None:
    command = [str(word) for word in SERVICES["sandbox"]["healthcheck"]["test"]][1:]
    url = urlsplit(url_of(command))
    assert ("GET", url.path) in sandbox_routes(), f"{url.path} is not a sandbox route"
    sandbox = COMMANDS["sandbox"].make_context("sandbox", argv(SERVICES["sandbox"])[1:]).params
    assert url.port == sandbox["port"]


def test_the_worker_uses_the_compose_rabbitmq_and_postgres() -> None:
    amqp = urlsplit(environment(SERVICES["worker"])["KUNPAY_AMQP_URL"])
    assert (amqp.scheme, amqp.hostname, amqp.port or 5672) == ("amqp", "rabbitmq", 5672)
    assert unquote(amqp.path[1:]) not in ("", "/"), "the worker has a vhost of its own"
    assert amqp.username not in (None, "guest")
    postgres = environment(SERVICES["postgres"])
    db = urlsplit(environment(SERVICES["worker"])["KUNPAY_DATABASE_URL"])
    assert (db.scheme, db.hostname, db.port or 5432) == ("postgres", "postgres", 5432)
    assert db.username == postgres["POSTGRES_USER"]
    assert db.password == postgres["POSTGRES_PASSWORD"]
    assert db.path[1:] == postgres["POSTGRES_DB"]


def test_the_worker_starts_with_every_backend_configured(
    no_kunpay_env: pytest.MonkeyPatch,
) -> None:
    settings = settings_of(no_kunpay_env, "worker")
    assert settings.enabled_backends() == set(BACKENDS)
    assert configuration_problems(settings) == []


# -- the compose file: users and secrets ----------------------------------------------------------


def test_broker_setup_acts_as_the_rabbitmq_admin_and_nobody_is_guest() -> None:
    rabbitmq = environment(SERVICES["rabbitmq"], raw=True)
    setup = environment(SERVICES["broker-setup"], raw=True)
    assert rabbitmq["RABBITMQ_DEFAULT_USER"] not in ("", "guest")
    assert setup["KUNPAY_BROKER_SETUP__ADMIN_USER"] == rabbitmq["RABBITMQ_DEFAULT_USER"]
    assert setup["KUNPAY_BROKER_SETUP__ADMIN_PASSWORD"] == rabbitmq["RABBITMQ_DEFAULT_PASS"]
    management = urlsplit(interpolate(setup["KUNPAY_BROKER_SETUP__MANAGEMENT_URL"]))
    assert (management.hostname, management.port) == ("rabbitmq", 15672)
    assert SERVICES["rabbitmq"]["image"].endswith("-management"), "broker-setup needs the API"
    assert setup.get("KUNPAY_BROKER_SETUP__OPERATOR_PASSWORD"), "no operator user without it"


def test_the_rabbitmq_image_is_the_tested_series() -> None:
    assert SERVICES["rabbitmq"]["image"].startswith("rabbitmq:3.10")


def test_every_app_with_a_policy_gets_a_broker_user(no_kunpay_env: pytest.MonkeyPatch) -> None:
    require_command("broker-setup")
    from kunpay_worker.broker_setup import plan

    settings = settings_of(no_kunpay_env, "broker-setup")
    assert settings.apps, "KUNPAY_APPS gives the demo app its policy"
    assert set(settings.apps) <= set(settings.broker_setup.apps)
    assert settings.apps["demo-shop"].payouts
    vhost, grants = plan(settings)  # raises on a guest worker or a clashing app name
    users = {grant.user: grant for grant in grants}
    worker = unquote(urlsplit(settings.amqp_url.get_secret_value()).username or "")
    assert users[worker].tags == "impersonator", "retried commands keep the app's user_id"
    assert vhost != "/"
    assert set(settings.broker_setup.apps) | {settings.broker_setup.operator_user} <= set(users)


def test_broker_setup_migrate_and_the_worker_share_the_settings() -> None:
    worker = environment(SERVICES["worker"], raw=True)
    for service in ("broker-setup", "migrate"):
        env = environment(SERVICES[service], raw=True)
        assert {k: env.get(k) for k in worker} == worker, service


def test_the_worker_does_not_get_the_broker_admin_password() -> None:
    assert "KUNPAY_BROKER_SETUP__ADMIN_PASSWORD" not in environment(SERVICES["worker"])
    assert "KUNPAY_BROKER_SETUP__ADMIN_PASSWORD" not in environment(SERVICES["migrate"])


def test_every_variable_has_one_default_so_up_works_out_of_the_box() -> None:
    defaults: dict[str, set[str]] = {}
    for inner in re.findall(r"\$\{([^}]*)\}", COMPOSE_TEXT):
        parsed = re.fullmatch(r"(\w+):-(.+)", inner)
        assert parsed, f"${{{inner}}}: give it a default (${{VAR:-dev-default}})"
        defaults.setdefault(parsed[1], set()).add(parsed[2])
    differing = {name: values for name, values in defaults.items() if len(values) > 1}
    assert not differing, f"one variable, several defaults: {differing}"
    assert not [n for n in defaults if n.startswith("KUNPAY_")], "KUNPAY_* are settings"


# -- the compose file: order and lifecycle -------------------------------------------------------


def healthchecked(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    return "build" in service and any(i.keyword == "HEALTHCHECK" for i in IMAGE)


@pytest.mark.parametrize(
    ("service", "dependency", "condition"),
    [
        ("broker-setup", "rabbitmq", "service_healthy"),
        ("migrate", "broker-setup", "service_completed_successfully"),
        ("migrate", "postgres", "service_healthy"),
        ("worker", "migrate", "service_completed_successfully"),
    ],
)
def test_the_services_start_in_order(service: str, dependency: str, condition: str) -> None:
    depends_on = SERVICES[service].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{service}: depends_on with conditions"
    assert depends_on.get(dependency, {}).get("condition") == condition


def test_every_awaited_health_is_checked() -> None:
    for name, service in SERVICES.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on no service {dependency}"
            if spec.get("condition") == "service_healthy":
                assert healthchecked(SERVICES[dependency]), f"{dependency} has no healthcheck"
    test = " ".join(SERVICES["rabbitmq"]["healthcheck"]["test"])
    assert "rabbitmq-diagnostics -q ping" in test


def test_one_shot_services_are_not_restarted() -> None:
    for name in ("broker-setup", "migrate"):
        assert SERVICES[name].get("restart", "no") == "no", name


def test_the_worker_has_time_to_drain_before_it_is_killed() -> None:
    env = environment(SERVICES["worker"])
    grace = float(env.get("KUNPAY_SHUTDOWN_GRACE", Settings.model_fields["shutdown_grace"].default))
    stop = seconds(SERVICES["worker"].get("stop_grace_period", "10s"))  # Docker's default
    assert stop > grace, f"stop_grace_period {stop}s; KUNPAY_SHUTDOWN_GRACE is {grace}s"
