"""The callback endpoints, in process, on the real databases (SQLite and PostgreSQL), with the
broker replaced by a recorder of what would be published."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tortoise import Tortoise
from tortoise.backends.base.executor import EXECUTOR_CACHE

from kunpay_sdk.contracts import (
    CollectCommand,
    TransactionType,
    command_fingerprint,
    transaction_id_for,
    validate_payment,
)
from kunpay_worker.messaging import Publisher
from kunpay_worker.metrics import Metrics
from kunpay_worker.providers.pawapay.callbacks import CallbackVerifier
from kunpay_worker.providers.pawapay.client import PawapayClient, RequestSigner
from kunpay_worker.settings import Settings
from kunpay_worker.storage import db
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.intake import NewTransaction, take_in_payment
from kunpay_worker.storage.models import Transaction
from kunpay_worker.webhooks import PATHS, Webhooks
from tests.integration.harness import Database

pytestmark = pytest.mark.integration

SECRET = "flw-secret-hash"
PLAN = repo.PollPlan(delays=[30], tiers_ms=[30_000], janitor_interval=3600)


class Recorder(Publisher):
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.broken = False

    async def publish(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        if self.broken:
            raise ConnectionError("broker down")
        assert (exchange, routing_key) == ("", "kunpay.poll")
        self.sent.append(json.loads(message.body))


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.create(request.param, tmp_path)
    EXECUTOR_CACHE.clear()
    settings = Settings(database_url=database.url)  # type: ignore[arg-type]
    await db.migrate(settings)
    await db.init(settings)
    try:
        yield database
    finally:
        await Tortoise.close_connections()
        EXECUTOR_CACHE.clear()
        await database.drop()


@pytest.fixture
def publisher() -> Recorder:
    return Recorder()


@pytest.fixture
async def web(database: Database, publisher: Recorder) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings(
        flutterwave={"webhook_secret_hash": SECRET},  # type: ignore[arg-type]
        server={"coalesce_window": 60, "max_body_bytes": 2048},  # type: ignore[arg-type]
    )

    async def readiness() -> tuple[bool, dict[str, Any]]:
        return True, {"database": True}

    metrics = Metrics(lambda: {"MTN_MOMO": "open", "PAWAPAY": "closed"})
    app = Webhooks(settings, publisher, readiness, None, metrics).app()
    async with TestClient(TestServer(app)) as client:
        yield client


async def payment(backend: str, *, handle: str | None = None) -> Transaction:
    key = uuid.uuid4().hex
    command = CollectCommand(
        command_id=uuid.uuid4(),
        transaction_id=transaction_id_for("shop", "collect", key),
        idempotency_key=key,
        provider="PAWAPAY",
        amount=Decimal("5000"),
        currency="XAF",
        phone_number="670000000",
        order_id="o",
        user_id="u",
        issued_at=datetime.now(UTC),
    )
    fields = validate_payment(
        provider="PAWAPAY",
        amount=command.amount,
        currency="XAF",
        phone_number="670000000",
        order_id="o",
        user_id="u",
    )
    new = NewTransaction(
        type=TransactionType.COLLECTION,
        provider="PAWAPAY",
        backend=backend,
        amount=fields.amount,
        currency="XAF",
        phone_number=fields.phone_number,
        order_id="o",
        user_id="u",
    )
    intake = await take_in_payment(
        command,
        app="shop",
        new=new,
        fingerprint=command_fingerprint("collect", fields.model_dump()),
        plan=PLAN,
    )
    assert intake.transaction is not None
    if handle is not None:
        await Transaction.filter(id=intake.transaction.id).update(provider_handle=handle)
    return intake.transaction


def signature(body: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_an_mtn_callback_queues_one_check_per_window(
    web: TestClient[Any, Any], publisher: Recorder, method: str
) -> None:
    tx = await payment("MTN_MOMO")
    url = f"{PATHS['MTN_COLLECTION']}?reference={tx.provider_reference}"
    body = {"status": "SUCCESSFUL", "financialTransactionId": "1"}  # a hint, never trusted
    first = await web.request(method, url, json=body)
    assert (first.status, (await first.json())["check"]) == (200, "queued")
    again = await web.request(method, url, json=body)
    assert (again.status, (await again.json())["check"]) == (200, "coalesced")
    assert publisher.sent == [{"transaction_id": str(tx.id), "check": "now"}]
    assert (await Transaction.get(id=tx.id)).status == "PENDING"


async def test_a_flood_of_forged_callbacks_queues_a_single_check(
    web: TestClient[Any, Any], publisher: Recorder
) -> None:
    tx = await payment("MTN_MOMO")
    url = f"{PATHS['MTN_COLLECTION']}?reference={tx.provider_reference}"
    answers = await asyncio.gather(
        *(web.put(url, json={"status": "SUCCESSFUL"}) for _ in range(40))
    )
    assert {a.status for a in answers} == {200}
    assert len(publisher.sent) == 1


async def test_mtn_callbacks_are_matched_by_external_id_too(
    web: TestClient[Any, Any], publisher: Recorder
) -> None:
    tx = await payment("MTN_MOMO")
    answer = await web.post(PATHS["MTN_DISBURSEMENT"], json={"externalId": str(tx.id)})
    assert answer.status == 200
    assert len(publisher.sent) == 1


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (PATHS["MTN_COLLECTION"], b"{not json", 400),
        (PATHS["MTN_COLLECTION"], b"[1, 2]", 400),
        (PATHS["MTN_COLLECTION"], b'{"status": "SUCCESSFUL"}', 400),
        (PATHS["MTN_COLLECTION"] + f"?reference={uuid.uuid4()}", b"{}", 404),
        (PATHS["PAWAPAY"], b'{"status": "COMPLETED"}', 400),
        (PATHS["PAWAPAY"], json.dumps({"depositId": str(uuid.uuid4())}).encode(), 404),
        (PATHS["ORANGE_MP"], b'{"status": "SUCCESSFULL"}', 400),
        (PATHS["ORANGE_MP"], b'{"payToken": "MP-unknown"}', 404),
    ],
)
async def test_bad_or_unknown_callbacks_are_refused_clearly(
    web: TestClient[Any, Any], publisher: Recorder, path: str, body: bytes, status: int
) -> None:
    answer = await web.post(path, data=body, headers={"Content-Type": "application/json"})
    assert answer.status == status
    assert publisher.sent == []


async def test_a_body_over_the_limit_is_413(web: TestClient[Any, Any]) -> None:
    answer = await web.post(PATHS["PAWAPAY"], data=b"x" * 4096)
    assert answer.status == 413


async def test_pawapay_and_orange_callbacks_find_their_transaction(
    web: TestClient[Any, Any], publisher: Recorder
) -> None:
    deposit = await payment("PAWAPAY")
    orange = await payment("ORANGE_MP", handle="MP-token-1")
    assert (
        await web.post(PATHS["PAWAPAY"], json={"depositId": deposit.provider_reference})
    ).status == 200
    assert (
        await web.post(PATHS["ORANGE_MP"], json={"data": {"payToken": "MP-token-1"}})
    ).status == 200
    assert [m["transaction_id"] for m in publisher.sent] == [str(deposit.id), str(orange.id)]


async def test_flutterwave_webhooks_must_carry_the_secret(
    web: TestClient[Any, Any], publisher: Recorder
) -> None:
    tx = await payment("FLUTTERWAVE", handle="4410120")
    event = {"event": "charge.completed", "data": {"id": 4410120, "tx_ref": tx.provider_reference}}
    raw = json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    assert (await web.post(PATHS["FLUTTERWAVE"], data=raw, headers=headers)).status == 401
    wrong = {**headers, "verif-hash": "guess"}
    assert (await web.post(PATHS["FLUTTERWAVE"], data=raw, headers=wrong)).status == 401
    forged = {**headers, "flutterwave-signature": signature(raw + b" ")}
    assert (await web.post(PATHS["FLUTTERWAVE"], data=raw, headers=forged)).status == 401
    assert publisher.sent == []
    signed = {**headers, "flutterwave-signature": signature(raw)}
    assert (await web.post(PATHS["FLUTTERWAVE"], data=raw, headers=signed)).status == 200
    assert len(publisher.sent) == 1


async def test_flutterwave_events_of_other_payments_are_acknowledged(
    web: TestClient[Any, Any], publisher: Recorder
) -> None:
    event = {"event": "charge.completed", "data": {"id": 1, "tx_ref": "someone-else"}}
    raw = json.dumps(event).encode()
    answer = await web.post(PATHS["FLUTTERWAVE"], data=raw, headers={"verif-hash": SECRET})
    assert (answer.status, (await answer.json())["status"]) == (200, "ignored")
    assert publisher.sent == []


async def test_a_check_that_cannot_be_queued_is_503_and_the_next_callback_tries_again(
    web: TestClient[Any, Any], publisher: Recorder
) -> None:
    tx = await payment("MTN_MOMO")
    url = f"{PATHS['MTN_COLLECTION']}?reference={tx.provider_reference}"
    publisher.broken = True
    assert (await web.put(url, json={})).status == 503
    publisher.broken = False
    assert (await web.put(url, json={})).status == 200  # not coalesced away
    assert len(publisher.sent) == 1


async def test_an_unexpected_failure_is_503_never_500(
    web: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(repo, "find_for_callback", broken)
    answer = await web.put(f"{PATHS['MTN_COLLECTION']}?reference=x", json={})
    assert answer.status == 503


async def test_health_and_readiness(web: TestClient[Any, Any]) -> None:
    assert (await web.get("/healthz")).status == 200
    ready = await web.get("/readyz")
    assert (ready.status, (await ready.json())["database"]) == (200, True)


async def test_metrics_count_pending_and_stale_payments_and_show_circuits(
    web: TestClient[Any, Any],
) -> None:
    await payment("MTN_MOMO")
    stale = await payment("MTN_MOMO")
    await Transaction.filter(id=stale.id).update(stale=True)
    answer = await web.get("/metrics")
    assert answer.status == 200
    text = await answer.text()
    assert "kunpay_pending_transactions 2.0" in text
    assert "kunpay_stale_transactions 1.0" in text
    assert 'kunpay_provider_circuit_state{backend="MTN_MOMO",state="open"} 1.0' in text
    assert 'kunpay_provider_circuit_state{backend="MTN_MOMO",state="closed"} 0.0' in text
    assert 'kunpay_provider_circuit_state{backend="PAWAPAY",state="closed"} 1.0' in text


# -- PawaPay signed callbacks ------------------------------------------------------------------

PAWAPAY_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_BASE = "https://pay.example.com/kunpay"


def pem(key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    """(private PEM, public PEM)."""
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
async def signed_web(
    database: Database, publisher: Recorder
) -> AsyncIterator[TestClient[Any, Any]]:
    """Callbacks must be signed with PAWAPAY_KEY; the worker sits behind a proxy that serves
    it under PUBLIC_BASE."""
    settings = Settings(
        public_base_url=PUBLIC_BASE,
        pawapay={"api_token": "t", "verify_callbacks": True},  # type: ignore[arg-type]
    )

    async def readiness() -> tuple[bool, dict[str, Any]]:
        return True, {}

    async with aiohttp.ClientSession() as session:
        client = PawapayClient(settings.pawapay, session, timeout=aiohttp.ClientTimeout(total=1))
        verifier = CallbackVerifier(client, pinned_public_key=pem(PAWAPAY_KEY)[1])
        app = Webhooks(settings, publisher, readiness, verifier).app()
        async with TestClient(TestServer(app)) as web_client:
            yield web_client


def pawapay_callback(
    deposit_id: str, *, key: ec.EllipticCurvePrivateKey = PAWAPAY_KEY
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps({"depositId": deposit_id, "status": "COMPLETED"}).encode()
    signer = RequestSigner.from_pem(pem(key)[0], "HTTP_EC_P256_KEY:1")
    url = f"{PUBLIC_BASE}{PATHS['PAWAPAY']}"  # what PawaPay called
    headers = signer.headers("POST", url, raw, content_type="application/json")
    return raw, {**headers, "Content-Type": "application/json"}


async def test_a_pawapay_callback_signed_by_pawapay_is_accepted(
    signed_web: TestClient[Any, Any], publisher: Recorder
) -> None:
    deposit = await payment("PAWAPAY")
    raw, headers = pawapay_callback(str(deposit.provider_reference))
    answer = await signed_web.post(PATHS["PAWAPAY"], data=raw, headers=headers)
    assert answer.status == 200, await answer.text()
    assert [m["transaction_id"] for m in publisher.sent] == [str(deposit.id)]


async def test_unsigned_tampered_or_foreign_pawapay_callbacks_are_401(
    signed_web: TestClient[Any, Any], publisher: Recorder
) -> None:
    deposit = await payment("PAWAPAY")
    raw, headers = pawapay_callback(str(deposit.provider_reference))
    plain = {"Content-Type": "application/json"}
    assert (await signed_web.post(PATHS["PAWAPAY"], data=raw, headers=plain)).status == 401
    tampered = raw.replace(b"COMPLETED", b"FAILED")
    assert (await signed_web.post(PATHS["PAWAPAY"], data=tampered, headers=headers)).status == 401
    foreign_raw, foreign = pawapay_callback(
        str(deposit.provider_reference), key=ec.generate_private_key(ec.SECP256R1())
    )
    answer = await signed_web.post(PATHS["PAWAPAY"], data=foreign_raw, headers=foreign)
    assert answer.status == 401
    assert "signature" in (await answer.json())["error"]
    assert publisher.sent == []
