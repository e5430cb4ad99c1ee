"""structlog set-up: JSON off a terminal, console on one; secrets and phone numbers masked."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import ContentEncodingError

__all__ = ["configure", "mask_event", "mask_value"]

_SECRET_KEY = re.compile(r"(?i)(secret|password|passwd|token|api_?key|pin|authorization|cookie)")
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@", re.I)
# Eight to fifteen digits standing alone (not inside an id such as a UUID).
_PHONE = re.compile(r"(?<![\w-])\+?\d{8,15}(?![\w-])")


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\g<scheme>:***@", value)
        return _PHONE.sub(lambda m: "*" * (len(m.group()) - 3) + m.group()[-3:], value)
    if isinstance(value, dict):
        return {
            k: ("***" if _SECRET_KEY.search(str(k)) else _mask_value(v)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def mask_value(value: Any) -> Any:
    """A value (text, or JSON-like data) with secrets and phone numbers masked."""
    return _mask_value(value)


def mask_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: secrets by key, passwords in URLs, phone numbers to last 3 digits."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEY.search(key) and value is not None:
            event_dict[key] = "***"
        else:
            event_dict[key] = _mask_value(value)
    return event_dict


def _connection_gone(message: str) -> bool:
    # "<Connection ...> closed", and a channel's close callback that found the transport
    # already gone ("... ChannelInvalidStateError: No active transport in channel").
    return message.endswith(" closed") or message.endswith("No active transport in channel")


class _BrokerGoneIsAWarning(logging.Filter):
    """aiormq and aio-pika log a broker restart or a closed connection as errors, although the
    robust connection reconnects and the worker carries on (nothing confirmed is lost: unacked
    messages come back). Those records become warnings, so an error in the log still means
    something went wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and (
            record.name == "aiormq.connection"
            or (record.name.startswith("aio_pika") and _connection_gone(record.getMessage()))
            # A handler cancelled inside a database transaction when its channel closed:
            # asyncpg rolls the transaction back as it returns the connection to the pool,
            # and the message, never acked, comes back.
            or (
                record.name == "asyncio"
                and record.getMessage().startswith("Resetting connection with an active")
            )
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _undecodable_body(exc: BaseException | None) -> bool:
    """A request body that does not decode as its Content-Encoding says (or names a coding
    aiohttp cannot decode): aiohttp's own error, or one it raised from it."""
    return isinstance(exc, ContentEncodingError) or isinstance(
        getattr(exc, "__cause__", None), ContentEncodingError
    )


class _UndecodableBodyIsAWarning(logging.Filter):
    """aiohttp logs a body that does not decode as its Content-Encoding says as an error: once
    it has been answered 400 ("Unhandled exception": the server's read of the rest of the body
    raises the decoding error again), or when it answers 400 itself for a coding it cannot
    decode ("Error handling request"). A client sent a bad request and was told so: a warning,
    so an error in the log still means something went wrong in the worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and record.name == "aiohttp.server"
            and record.exc_info is not None
            and _undecodable_body(record.exc_info[1])
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(fmt: str = "auto", level: str = "INFO") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # JSON: tracebacks become text here, so the masking below covers them too.
        *([structlog.processors.format_exc_info] if as_json else []),
        mask_event,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_BrokerGoneIsAWarning())
    handler.addFilter(_UndecodableBodyIsAWarning())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "tortoise", "aiosqlite", "asyncpg"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
