from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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
        # ...and its log holds no secret and no full phone number (in any text it logged).
        assert_no_secrets(worker.lines)
        assert worker.proc.returncode is None
        assert await worker.stop() == 0, worker.tail()
    finally:
        await stack.close()


SECRET_SETTINGS = ("KEY", "TOKEN", "SECRET", "PIN", "PASSWORD", "HASH")


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def assert_no_secrets(lines: list[dict[str, Any]]) -> None:
    """No configured secret and no full phone number in any text of these log records."""
    secrets = [v for k, v in WORKER_ENV.items() if k.endswith(SECRET_SETTINGS)]
    assert len(secrets) >= 8  # the check below has something to look for
    numbers = ("670000000", "670000002", "690000000", "237670000000")
    for text in (t for line in lines for t in _texts(line)):
        for secret in (*secrets, *numbers):
            found = re.search(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", text)
            assert found is None, f"{secret!r} in the worker's log: {text[:300]}"


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
