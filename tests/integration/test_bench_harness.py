"""The benchmark harness works (issue 7): a tiny run of each benchmark, checked for the shape of
its JSON and for correctness (every payment completed, nothing initiated twice) — never for
speed: tests hold no timing thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("KUNPAY_TEST_AMQP_URL", "amqp://guest:guest@localhost:5672/")
NUMBER = (int, float)


def run_benchmark(args: list[str], out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, *args, "--amqp-url", AMQP_URL, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def is_number(value: Any) -> bool:
    return isinstance(value, NUMBER) and not isinstance(value, bool) and value >= 0


def test_e2e_runs_and_reports_every_figure(tmp_path: Path) -> None:
    payments = 20
    # As a file (python benchmarks/e2e.py), with small ceilings: it proves the harness works.
    report = run_benchmark(
        [
            "benchmarks/e2e.py",
            "--payments",
            str(payments),
            "--db",
            "sqlite",
            "--ceiling-messages",
            "200",
            "--ceiling-transactions",
            "100",
        ],
        tmp_path / "e2e.json",
    )
    assert report["benchmark"] == "e2e"
    config, result = report["config"], report["result"]
    assert config["payments"] == payments
    assert config["db"] == "sqlite"
    assert config["poll_delays_s"]
    assert "KUNPAY_PREFETCH" in config["worker_settings"]

    assert result["offered"] == payments
    assert result["completed"] == payments
    assert result["issue_errors"] == 0
    assert result["all_settled"] is True
    assert result["finals"] == {"payment.succeeded": payments}
    assert result["sandbox"]["references_initiated"] == payments
    assert result["sandbox"]["double_initiations"] == 0
    assert result["log_errors"] == {"worker-0": 0}

    throughput = result["throughput"]
    assert is_number(throughput["steady_per_s"])
    assert is_number(throughput["overall_per_s"])
    assert throughput["window"]["completions"] > 0

    latency = result["latency_ms"]["collections"]
    for stage in ("call_return", "initiated", "final", "final_net_of_provider_latency"):
        figures = latency[stage]
        assert figures["n"] > 0
        for key in ("p50", "p95", "p99", "max", "mean"):
            assert isinstance(figures[key], NUMBER), (stage, key, figures)
    assert latency["provider_calls_on_path"] == 2

    cpu = result["cpu"]
    assert is_number(cpu["worker_ms_per_payment"])
    assert is_number(cpu["worker_ms_per_payment_steady"])
    names = [p["name"] for p in cpu["processes"]]
    assert "worker-0" in names
    assert "sandbox" in names
    for process in cpu["processes"]:
        assert is_number(process["cpu_ms"])
        assert is_number(process["peak_rss_mb"])
        assert process["peak_rss_mb"] > 0
    assert set(cpu["servers"]) == {"rabbitmq", "postgres"}

    amqp, db = report["ceilings"]["amqp"], report["ceilings"]["db"]
    for value in (
        amqp["publish_confirm_per_s"],
        amqp["publish_confirm_sequential_per_s"],
        amqp["consume_ack_per_s"],
        db["transactions_per_s"],
        db["transactions_sequential_per_s"],
    ):
        assert is_number(value)
        assert value > 0
    assert db["kind"] == "sqlite"
    for ratio in report["ratios"].values():
        assert is_number(ratio)

    assert len(report["targets"]) == 4
    for target in report["targets"]:
        assert {"target", "goal", "unit", "measured", "applies", "met"} <= set(target)
        assert target["met"] in (True, False, None)


def test_pending_runs_and_reports_every_figure(tmp_path: Path) -> None:
    report = run_benchmark(
        [
            "-m",
            "benchmarks.pending",
            "--pending",
            "40,80",
            "--poll-rate",
            "10",
            "--window",
            "1",
            "--idle",
            "0.5",
            "--db",
            "sqlite",
            "--ceiling-messages",
            "100",
            "--ceiling-transactions",
            "50",
        ],
        tmp_path / "pending.json",
    )
    assert report["benchmark"] == "pending"
    assert [s["pending"] for s in report["sizes"]] == [40, 80]
    for size in report["sizes"]:
        assert size["due_in_window"] == 10
        assert size["seeded_not_due"] == size["pending"] - 10
        assert size["polls_checked"] == 10
        assert size["lookups_seen"] == 10
        assert size["worker_log_errors"] == 0
        for key in (
            "polls_per_s",
            "worker_cpu_ms_window",
            "worker_cpu_ms_per_poll",
            "worker_idle_cpu_ms_per_s",
            "worker_peak_rss_mb",
            "worker_rss_mb",
            "seed_s",
        ):
            assert is_number(size[key]), (key, size[key])
        assert isinstance(size["worker_cpu_ms_per_poll_net_of_idle"], NUMBER)
        assert size["lag_due_to_recorded_ms"]["n"] == 10
    assert report["ceilings"]["db"]["transactions_per_s"] > 0
    assert len(report["targets"]) == 4
    for target in report["targets"]:
        assert target["met"] in (True, False, None)
