"""``make faults``: every fault scenario at a larger scale than CI, a table, and JSON.

    python -m tests.fault [--scale large|small] [--only NAME ...] [--seed N] [--json PATH]

Needs what ``make test`` sets up (RabbitMQ, the private PostgreSQL and its KUNPAY_TEST_* env);
``scripts/dev.sh faults`` does that. Exits 1 when any scenario broke the contract.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.fault.chaos import Report
from tests.fault.scenarios import SCENARIOS, Scale, create_stack


async def run_all(scale: Scale, only: list[str], seed: int) -> list[Report]:
    reports: list[Report] = []
    console = Console(stderr=True)
    for name, (scenario, databases) in SCENARIOS.items():
        if only and name not in only:
            continue
        for db in databases:
            console.print(f"[bold]{name}[/bold] on {db} ...")
            with tempfile.TemporaryDirectory() as tmp:
                stack = await create_stack(db, Path(tmp))
                try:
                    report = await scenario(stack, scale, seed)
                finally:
                    await stack.close()
            reports.append(report)
            verdict = "ok" if not report.violations() else f"VIOLATED {report.violations()}"
            console.print(f"  {report.payments} payments, {report.seconds:.0f} s: {verdict}")
    return reports


def table(reports: list[Report]) -> Table:
    out = Table(title="kunpay fault suite")
    for column in (
        "scenario",
        "db",
        "payments",
        "faults injected",
        "lost",
        "double charges",
        "missing events",
        "wrong states",
        "hung calls",
        "worker errors",
        "duplicates delivered",
        "recover s",
    ):
        out.add_column(
            column, justify="left" if column in ("scenario", "faults injected") else "right"
        )
    for r in reports:
        injected = ", ".join(f"{k} {v}" for k, v in sorted(r.injected.items()))
        out.add_row(
            r.scenario,
            r.database,
            str(r.payments),
            injected,
            str(r.lost),
            str(r.double_charges),
            str(r.missing_events),
            str(r.wrong_states),
            str(r.hangs),
            str(r.worker_errors),
            str(r.duplicates_delivered),
            f"{r.recover_seconds:.1f}",
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault", description=__doc__)
    parser.add_argument("--scale", choices=["small", "large"], default="large")
    parser.add_argument("--only", nargs="*", default=[], choices=sorted(SCENARIOS))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    scale = Scale.named(args.scale)
    started = time.monotonic()
    reports = asyncio.run(run_all(scale, args.only, args.seed))
    Console().print(table(reports))
    result: dict[str, Any] = {
        "scale": args.scale,
        "seed": args.seed,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "seconds": round(time.monotonic() - started, 1),
        "reports": [r.as_dict() for r in reports],
    }
    path = args.json or Path(".run") / f"faults-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    Console(stderr=True).print(f"JSON written to {path}")
    return 1 if any(r.violations() for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
