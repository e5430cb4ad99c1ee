from __future__ import annotations

import json
import logging

import pytest
import structlog

from kunpay_worker import logs
from kunpay_worker.providers.base import mask_payload, mask_text


def test_request_bodies_lose_phone_numbers_and_secrets() -> None:
    body = {
        "payer": {"partyIdType": "MSISDN", "partyId": "237670000123"},
        "pin": "1234",
        "amount": "5000",
        "access_token": "abc",
    }
    masked = mask_payload(body)
    assert masked["payer"]["partyId"] == "*********123"
    assert masked["pin"] == "***"
    assert masked["access_token"] == "***"
    assert masked["amount"] == "5000"


def test_free_text_loses_phone_numbers() -> None:
    assert mask_text('{"payer": "237670000123"}') == '{"payer": "*********123"}'


def test_the_log_processor_masks_secrets_urls_and_numbers() -> None:
    event = logs.mask_event(
        None,
        "info",
        {
            "event": "paying +237670000123",
            "api_key": "k",
            "url": "amqp://shop:hunter2@broker/",
            "nested": {"password": "p", "phone": "237690000456"},
            "count": 3,
        },
    )
    assert event["event"] == "paying **********123"
    assert event["api_key"] == "***"
    assert event["url"] == "amqp://shop:***@broker/"
    assert event["nested"] == {"password": "***", "phone": "*********456"}
    assert event["count"] == 3


def test_configured_json_logs_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "INFO")
    try:
        structlog.get_logger("t").info("sent", phone="+237670000123", token="t0k")
        logging.getLogger("stdlib").warning("from %s", "237690000456")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["phone"] == "**********123"
    assert lines[0]["token"] == "***"
    assert lines[1]["event"] == "from *********456"


def test_ids_that_contain_digit_runs_are_left_alone() -> None:
    tid = "63772730-4faf-5fe9-bea1-161109782411"
    assert logs.mask_event(None, "info", {"transaction_id": tid})["transaction_id"] == tid
    assert mask_text(f'{{"externalId": "{tid}"}}') == f'{{"externalId": "{tid}"}}'
    assert mask_payload({"payer": {"partyId": "237670000123"}, "externalId": tid}) == {
        "payer": {"partyId": "*********123"},
        "externalId": tid,
    }
