"""What the intake writes about a command it refuses (no database: the reason alone)."""

from __future__ import annotations

import uuid

import pytest

from kunpay_worker.engine import Engine
from kunpay_worker.handlers.common import MAX_REASON
from kunpay_worker.providers.registry import BACKENDS
from kunpay_worker.settings import Settings
from kunpay_worker.storage.intake import conflict_reason
from kunpay_worker.storage.repository import PollPlan

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


def test_the_send_is_claimed_at_intake_only_where_an_unsent_request_can_be_told_apart() -> None:
    """Engine.intake_claim: a delivery that dies between intake and send leaves a SENDING row,
    resolved by asking the provider. Only a provider that de-duplicates by reference (MTN,
    PawaPay) or gives its key before the send (Orange) lets that end in a clean send; for
    Flutterwave an unknown send is never repeated, so its claim waits for the send."""
    engine = Engine(
        settings=Settings(send_lease=45),
        backends=dict(BACKENDS),  # type: ignore[arg-type]  # the classes carry the flags
        plan=PollPlan(delays=[1.0], tiers_ms=[1000], janitor_interval=3600),
        notify=lambda: None,
    )
    assert {name: engine.intake_claim(name) for name in sorted(BACKENDS)} == {
        "FLUTTERWAVE": None,
        "MTN_MOMO": 45,
        "ORANGE_MP": 45,
        "PAWAPAY": 45,
    }
    assert engine.intake_claim(None) is None
    assert engine.intake_claim("NOT_CONFIGURED") is None
