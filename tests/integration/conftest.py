from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kunpay_sdk import KunPayClient
from tests.integration.harness import WORKER_ENV, EventLog, Stack

pytestmark = pytest.mark.integration

DATABASES = ["sqlite", "postgres"]


@pytest.fixture(scope="session", params=DATABASES)
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """A shared stack with one worker per database, for tests that do not kill it."""
    stack = await Stack.create(request.param, tmp_path_factory.mktemp(request.param))
    try:
        worker = await stack.start_worker()
        yield stack
        # Whatever the tests did, the worker logged no error and is still running...
        assert worker.errors() == [], worker.tail()
        # ...and its log holds no secret and no full phone number.
        text = json.dumps(worker.lines)
        secrets = [v for k, v in WORKER_ENV.items() if k.endswith(("KEY", "TOKEN", "SECRET"))]
        for secret in (*secrets, "670000000", "670000002", "690000000"):
            assert secret not in text, f"{secret!r} in the worker's log"
        assert worker.proc.returncode is None
        assert await worker.stop() == 0, worker.tail()
    finally:
        await stack.close()


@pytest.fixture(params=DATABASES)
async def own_stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack of the test's own, with no worker started, for tests that kill or stop it."""
    stack = await Stack.create(request.param, tmp_path)
    try:
        yield stack
    finally:
        await stack.close()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[KunPayClient]:
    async with await stack.client() as client:
        yield client


@pytest.fixture
async def events(client: KunPayClient) -> AsyncIterator[EventLog]:
    log = await EventLog(client).start()
    try:
        yield log
    finally:
        await log.close()
