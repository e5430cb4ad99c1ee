"""Worker settings from the environment: ``KUNPAY_*``, nested with ``__``.

``KUNPAY_MTN_MOMO__COLLECTION__API_KEY=...`` sets ``settings.mtn_momo.collection.api_key``.
Lists and maps are JSON: ``KUNPAY_POLL__DELAYS='[15, 30, 60]'``. Secrets are ``SecretStr`` and
never printed.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from tortoise.backends.base.config_generator import expand_db_url

from kunpay_sdk.money import CURRENCY_EXPONENTS
from kunpay_sdk.msisdn import PROVIDER_OPERATORS
from kunpay_sdk.topology import APP_NAME

BACKENDS = ("MTN_MOMO", "PAWAPAY", "FLUTTERWAVE", "ORANGE_MP")


class MtnProduct(BaseModel):
    """Credentials of one MTN MoMo product (collection or disbursement)."""

    subscription_key: SecretStr | None = None
    api_user: str | None = None
    api_key: SecretStr | None = None

    def missing(self) -> list[str]:
        return [
            name
            for name, value in (
                ("subscription_key", self.subscription_key),
                ("api_user", self.api_user),
                ("api_key", self.api_key),
            )
            if not value
        ]


def _known_currencies(value: list[str]) -> list[str]:
    unknown = sorted(set(value) - set(CURRENCY_EXPONENTS))
    if unknown:
        raise ValueError(f"unknown currencies {unknown}")
    return value


class MtnMomoSettings(BaseModel):
    base_url: str = "https://sandbox.momodeveloper.mtn.com"
    # "sandbox" on MTN's sandbox; a country value such as "mtncameroon" in production.
    target_environment: str = "sandbox"
    # What this environment accepts: EUR on MTN's sandbox, XAF in Cameroon.
    currencies: list[str] = ["XAF"]
    collection: MtnProduct = MtnProduct()
    # Payouts, refunds and the balance use the disbursement product's own credentials.
    disbursement: MtnProduct = MtnProduct()
    # Before a payout: is the balance enough, is the payee's account active?
    check_balance_before_transfer: bool = True
    check_account_holder: bool = True
    # Refresh a token this long before MTN says it expires.
    token_refresh_margin: float = 60.0

    _currencies = field_validator("currencies")(_known_currencies)


class PawapaySettings(BaseModel):
    base_url: str = "https://api.sandbox.pawapay.io"
    api_token: SecretStr | None = None
    currencies: list[str] = ["XAF"]
    # PawaPay's provider code per operator (Cameroon).
    operator_codes: dict[str, str] = {"MTN": "MTN_MOMO_CMR", "ORANGE": "ORANGE_CMR"}
    # Shown to the customer: 4-22 characters.
    customer_message: str = Field("kunpay payment", min_length=4, max_length=22)
    # When the PawaPay account requires signed financial requests (RFC 9421): our private key
    # (PEM) and the key id PawaPay knows it by.
    signing_key: SecretStr | None = None
    signing_key_id: str | None = None
    # Accept only callbacks signed by PawaPay (RFC 9421), checked with PawaPay's public key:
    # fetched from GET /v2/public-key/http unless pinned here (PEM).
    verify_callbacks: bool = False
    callback_public_key: SecretStr | None = None

    _currencies = field_validator("currencies")(_known_currencies)


class FlutterwaveSettings(BaseModel):
    base_url: str = "https://api.flutterwave.com"
    secret_key: SecretStr | None = None
    currencies: list[str] = ["XAF"]
    country: str = "CM"
    # Flutterwave requires a customer email on every charge.
    customer_email: str | None = None
    # Network names Flutterwave expects per operator.
    networks: dict[str, str] = {"MTN": "MTN", "ORANGE": "ORANGE"}
    # The dashboard's "secret hash": webhooks must carry it (verif-hash) or sign with it
    # (flutterwave-signature). Unset: every webhook is refused.
    webhook_secret_hash: SecretStr | None = None

    _currencies = field_validator("currencies")(_known_currencies)


class OrangeMpSettings(BaseModel):
    base_url: str = "https://api-s1.orange.cm"
    token_path: str = "/token"  # noqa: S105 - a URL path, not a secret
    api_path: str = "/omcoreapis/1.0.2"
    # OAuth client (Basic auth on the token endpoint).
    client_id: str | None = None
    client_secret: SecretStr | None = None
    # The merchant's static X-AUTH-TOKEN, channel number and PIN.
    x_auth_token: SecretStr | None = None
    channel_user_msisdn: str | None = None
    pin: SecretStr | None = None
    currencies: list[str] = ["XAF"]
    token_refresh_margin: float = 60.0
    # Orange may refuse a repeat debit of the same number and amount within a short window:
    # a retry of a failed Orange collection waits this long after the failure before sending.
    retry_wait: float = 120.0
    # Some Orange set-ups limit orderId (one client says 20 characters, no '-'): then the
    # reference is shortened to fit. Unset: the full uuid4 is sent.
    order_id_max_length: int | None = Field(None, ge=8)

    _currencies = field_validator("currencies")(_known_currencies)


class HttpSettings(BaseModel):
    """Timeouts of every provider call, in seconds (aiohttp ClientTimeout)."""

    total_timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    # Calls in flight per backend at most; the rest wait their turn (a bounded wait: see
    # providers/registry.py). As large as the prefetch, so that a slow provider (1 s answers)
    # does not cap throughput at slots / latency while the worker idles (Little's law); it
    # still bounds what one worker can pile onto a struggling backend.
    max_concurrent_calls: int = Field(256, ge=1)
    # Circuit breaker per backend: after this many calls in a row that got no usable answer
    # (timeouts, 5xx, refused connections), stop calling it for cooldown seconds, then let one
    # probe through.
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown: float = Field(30.0, gt=0)


class ServerSettings(BaseModel):
    """The worker's HTTP server: provider callbacks, /healthz, /readyz."""

    host: str = "0.0.0.0"  # noqa: S104 - it runs in a container behind a load balancer
    port: int = Field(8080, ge=0, le=65535)
    # Callback bodies larger than this are refused (413).
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # A callback triggers at most one provider check per transaction per window (seconds).
    coalesce_window: float = Field(5.0, ge=0)


class JanitorSettings(BaseModel):
    """The sweep that re-schedules overdue checks (lost poll messages, spent schedules)."""

    sweep_interval: float = Field(60.0, gt=0)
    # next_poll_at this far in the past counts as overdue (a check in flight is not).
    grace: float = Field(60.0, ge=0)
    # A PENDING transaction older than this is given up on: flagged stale, no more checks.
    max_age: float = Field(72 * 3600, gt=0)
    # How long one worker holds the sweep before another may take it.
    lease: float = Field(120.0, gt=0)
    batch: int = Field(500, ge=1)


class AppPolicy(BaseModel):
    """What one app (a broker user) may do. Apps not listed in KUNPAY_APPS get the defaults."""

    model_config = ConfigDict(extra="forbid")

    # Payouts (disburse) and reading the merchant balance: off unless enabled.
    payouts: bool = False
    refunds: bool = True
    # Largest amount of one collection, payout or refund (any currency); unset: no limit.
    max_amount: Decimal | None = Field(None, gt=0)


class BrokerSetupSettings(BaseModel):
    """``kunpay-worker broker-setup``: creates kunpay's RabbitMQ users through the management
    API. The worker's user and vhost come from KUNPAY_AMQP_URL."""

    management_url: str = "http://localhost:15672"
    admin_user: str = "guest"
    admin_password: SecretStr = SecretStr("guest")
    # The operators' user (dead letters); not created when no password is set.
    operator_user: str = "kunpay-operator"
    operator_password: SecretStr | None = None
    # App name (its broker user) → password.
    apps: dict[str, SecretStr] = {}


class PollSettings(BaseModel):
    # Seconds: first check after initiation, then each after the previous one.
    delays: list[float] = [15, 30, 60, 120, 240, 480]
    # After the schedule, next_poll_at is set this far ahead for the janitor's sweeps.
    janitor_interval: float = 3600
    # A collection the provider reported FAILED is checked again this long after (each after
    # the previous): a late success completes it, announced with late=true.
    late_delays: list[float] = [900, 3600, 4 * 3600]

    @field_validator("delays")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(d <= 0 for d in value):
            raise ValueError("poll delays must be a non-empty list of positive seconds")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KUNPAY_", env_nested_delimiter="__", extra="ignore"
    )

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/")
    database_url: SecretStr = SecretStr("sqlite://kunpay.sqlite3")
    # PostgreSQL pool size (Tortoise's default maxsize is 5, too small for the prefetch). The
    # transactions are short and never await the network, so handlers share a pool much
    # smaller than the prefetch; the rest wait for a connection.
    database_pool_size: int = Field(20, ge=1)

    # Provider key (what apps name) → backend (the API that serves it).
    providers: dict[str, str] = {"MTN_CAMEROON": "MTN_MOMO"}
    mtn_momo: MtnMomoSettings = MtnMomoSettings()
    pawapay: PawapaySettings = PawapaySettings()
    flutterwave: FlutterwaveSettings = FlutterwaveSettings()
    orange_mp: OrangeMpSettings = OrangeMpSettings()
    http: HttpSettings = HttpSettings()
    poll: PollSettings = PollSettings()
    server: ServerSettings = ServerSettings()
    janitor: JanitorSettings = JanitorSettings()
    # Per-app permissions and limits, by app name (its broker user).
    apps: dict[str, AppPolicy] = {}
    broker_setup: BrokerSetupSettings = BrokerSetupSettings()

    # Also accept MTN's sandbox test numbers and EUR (only for MTN's own sandbox).
    accept_sandbox_numbers: bool = False
    # How long a send claim holds; longer than a provider call can take.
    send_lease: float = Field(60.0, gt=0)
    # Sends of one transaction's request before giving up (only ever repeated when the provider
    # certainly did not get it, or de-duplicates and says it does not know the reference).
    max_send_attempts: int = Field(5, ge=1)
    # Delayed re-deliveries of commands that hit a transient error, in seconds.
    command_retry_delays: list[float] = [1, 5, 30, 300]
    max_command_attempts: int = Field(10, ge=1)
    # Messages handled concurrently per queue. Most of a message's time is spent waiting (on
    # the provider, on the database): a large window keeps the worker busy when the provider
    # is slow (Little's law: 1 s answers at 100 payments/s need about 100 in flight). A killed
    # worker's window is redelivered, each message counting one delivery toward delivery_limit:
    # that counts per message, not per window.
    prefetch: int = Field(256, ge=1)
    delivery_limit: int = Field(20, ge=2)
    # Outbox relay: rows per batch, sweep interval for rows left behind, claim lease.
    outbox_batch: int = Field(200, ge=1)
    outbox_sweep_interval: float = Field(1.0, gt=0)
    outbox_lease: float = Field(15.0, gt=0)
    # Seconds to finish in-flight messages on SIGTERM.
    shutdown_grace: float = Field(20.0, ge=0)
    # Shown to the payer or payee with the order id (MTN payerMessage/payeeNote, Orange
    # description); never empty (MTN has answered 500 to empty texts).
    payment_message: str = Field("Payment", min_length=1, max_length=100)
    # Base of the callback URLs sent to providers; no callbacks requested when unset.
    public_base_url: str | None = None
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @field_validator("providers")
    @classmethod
    def _known_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key, backend in value.items():
            if key not in PROVIDER_OPERATORS:
                raise ValueError(
                    f"unknown provider key {key!r}; known: {sorted(PROVIDER_OPERATORS)}"
                )
            if backend not in BACKENDS:
                raise ValueError(f"unknown backend {backend!r} for {key}; known: {list(BACKENDS)}")
        return value

    @model_validator(mode="after")
    def _lease_outlives_calls(self) -> Self:
        if self.send_lease <= self.http.total_timeout:
            raise ValueError(
                f"send_lease ({self.send_lease}s) must exceed http.total_timeout "
                f"({self.http.total_timeout}s): a claim must outlive the call it guards"
            )
        return self

    @field_validator("apps")
    @classmethod
    def _app_names(cls, value: dict[str, AppPolicy]) -> dict[str, AppPolicy]:
        for name in value:
            if not APP_NAME.match(name):
                raise ValueError(f"app name {name!r}: use 1-64 of A-Z a-z 0-9 _ -")
        return value

    def policy(self, app: str) -> AppPolicy:
        return self.apps.get(app, AppPolicy())

    def enabled_backends(self) -> set[str]:
        return set(self.providers.values())

    def tortoise_config(self) -> dict[str, object]:
        url = self.database_url.get_secret_value()
        scheme = urlsplit(url).scheme
        connection: str | dict[str, Any] = url
        if scheme in ("postgres", "asyncpg", "postgresql"):
            if "maxsize=" not in url:
                url += ("&" if "?" in url else "?") + f"maxsize={self.database_pool_size}"
            # Tortoise's asyncpg client, without a reset query after every pooled query.
            connection = {**expand_db_url(url), "engine": "kunpay_worker.storage.postgres"}
        elif scheme == "sqlite":
            # Tortoise's SQLite client with fewer thread trips per transaction.
            connection = {**expand_db_url(url), "engine": "kunpay_worker.storage.sqlite"}
        return {
            "connections": {"default": connection},
            "apps": {
                "kunpay": {
                    "models": ["kunpay_worker.storage.models"],
                    "migrations": "kunpay_worker.storage.migrations",
                    "default_connection": "default",
                }
            },
            "use_tz": True,
            "timezone": "UTC",
        }
