"""Issue 6: the reliability contract under real faults (small runs; `make faults` runs large).

Every scenario drives mixed payments through the SDK while it injects its faults, then checks
lost = 0, double charges = 0, missing events = 0, no state the provider contradicts (forged
callbacks included), no call that hung, no error in any worker's log.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fault.scenarios import SCENARIOS, SMALL, create_stack
from tests.integration.harness import Stack

pytestmark = [pytest.mark.integration, pytest.mark.fault]

CASES = [(name, db) for name, (_, dbs) in SCENARIOS.items() for db in dbs]


@pytest.fixture
async def fault_stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await create_stack(request.param, tmp_path)
    try:
        yield stack
    finally:
        await stack.close()


@pytest.mark.parametrize(
    ("scenario", "fault_stack"), CASES, indirect=["fault_stack"], ids=[f"{n}-{d}" for n, d in CASES]
)
@pytest.mark.timeout(900)
async def test_the_contract_holds(scenario: str, fault_stack: Stack) -> None:
    run, _ = SCENARIOS[scenario]
    report = await run(fault_stack, SMALL, 6)
    summary = json.dumps(report.as_dict(), indent=1, default=str)
    assert report.payments >= SMALL.payments // 2, summary
    assert sum(report.injected.values()) > 0, summary  # faults really were injected
    assert report.violations() == {}, summary
