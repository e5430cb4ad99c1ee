"""What the intake writes about a command it refuses (no database: the reason alone)."""

from __future__ import annotations

import uuid

import pytest

from kunpay_worker.handlers.common import MAX_REASON
from kunpay_worker.storage.intake import conflict_reason

TX = uuid.UUID("0b7c2a52-3f5e-5a9b-8c1d-2e3f4a5b6c7d")


def test_a_conflict_names_the_key_and_the_transaction() -> None:
    assert conflict_reason("order-42", TX) == (
        f"IDEMPOTENCY_CONFLICT: key 'order-42' was already used for transaction {TX} "
        "with different content"
    )


@pytest.mark.parametrize(
    "key", ["\x01" * 200, "\U0010ffff" * 200, "'" * 200, "é" * 200, "\x00\x7f\u200b" * 66]
)
def test_a_conflict_fits_its_column_whatever_the_keys_characters(key: str) -> None:
    reason = conflict_reason(key, TX)
    assert len(reason) <= MAX_REASON  # inbox.reason
    assert reason.startswith("IDEMPOTENCY_CONFLICT: key ")
    assert reason.endswith(f" was already used for transaction {TX} with different content")
