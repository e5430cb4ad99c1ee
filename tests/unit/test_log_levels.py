"""A broker going away, or a client's undecodable body, is a warning in the worker's log; other
errors stay errors."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web import RequestPayloadError

from kunpay_worker.logs import _BrokerGoneIsAWarning, _UndecodableBodyIsAWarning


def record(name: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("name", "message", "level"),
    [
        ("aiormq.connection", "Unexpected connection close from remote", logging.WARNING),
        ("aiormq.connection", "error when creating transport", logging.WARNING),
        (
            "aio_pika.tools",
            "Callback <...RobustChannel._on_close> error: RuntimeError: closed",
            logging.WARNING,
        ),
        (
            "aio_pika.tools",
            "Callback <...RobustChannel._on_close> error: ChannelInvalidStateError: "
            "No active transport in channel",
            logging.WARNING,
        ),
        ("aio_pika.tools", "Callback failed: ValueError", logging.ERROR),
        ("kunpay.worker", "handler failed", logging.ERROR),
        ("asyncio", "Resetting connection with an active transaction <...>", logging.WARNING),
        ("asyncio", "Task exception was never retrieved", logging.ERROR),
        ("aiormq.connection", "whatever", logging.INFO),
    ],
)
def test_only_broker_connection_losses_are_downgraded(name: str, message: str, level: int) -> None:
    given = record(name, message, logging.INFO if level == logging.INFO else logging.ERROR)
    assert _BrokerGoneIsAWarning().filter(given) is True
    assert given.levelno == level
    assert given.levelname == logging.getLevelName(level)


def _raised_from(cause: BaseException) -> BaseException:
    try:
        raise RequestPayloadError("400, message: Can not decode content-encoding: gzip") from cause
    except RequestPayloadError as exc:
        return exc


DECODING = ContentEncodingError("Can not decode content-encoding: gzip")


@pytest.mark.parametrize(
    ("name", "message", "exc", "level"),
    [
        # The server's read of the rest of a body it already answered 400.
        ("aiohttp.server", "Unhandled exception", _raised_from(DECODING), logging.WARNING),
        # A coding aiohttp cannot decode (brotli, zstd): it answers 400 itself.
        ("aiohttp.server", "Error handling request from %s", DECODING, logging.WARNING),
        ("aiohttp.server", "Unhandled exception", _raised_from(ValueError()), logging.ERROR),
        ("aiohttp.server", "Unhandled exception", RuntimeError("a bug"), logging.ERROR),
        ("aiohttp.server", "Error handling request from %s", None, logging.ERROR),
        ("kunpay.webhooks", "callback handling failed", DECODING, logging.ERROR),
    ],
)
def test_only_undecodable_bodies_are_downgraded(
    name: str, message: str, exc: BaseException | None, level: int
) -> None:
    given = record(name, message)
    if exc is not None:
        given.exc_info = (type(exc), exc, exc.__traceback__)
    assert _UndecodableBodyIsAWarning().filter(given) is True
    assert given.levelno == level
    assert given.levelname == logging.getLevelName(level)


def test_database_outages_are_told_apart_from_bugs() -> None:
    import asyncpg

    from kunpay_worker.storage.db import unavailable

    wrapped = RuntimeError("the query failed")
    wrapped.__cause__ = asyncpg.exceptions.AdminShutdownError("terminating connection")
    assert unavailable(wrapped)
    assert unavailable(ConnectionRefusedError(111, "refused"))
    assert unavailable(asyncpg.exceptions.InterfaceError("connection is closed"))
    assert not unavailable(KeyError("a bug"))
    assert not unavailable(asyncpg.exceptions.UniqueViolationError("duplicate key"))
