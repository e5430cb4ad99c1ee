"""The parts every benchmark starts: a RabbitMQ vhost, a database, the sandbox, worker processes;
and what they measure with: CPU and peak RSS from ``/proc``, percentiles, JSON output.

Like ``tests/integration/harness.py``, but everything runs as a separate process (the sandbox
too), so each process's CPU is its own, and the worker logs go to files in the run's directory
rather than through pipes the benchmark would have to drain.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import asyncpg  # type: ignore[import-untyped]
from rich.console import Console

from kunpay_worker.settings import HttpSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

AMQP_URL = os.environ.get("KUNPAY_BENCH_AMQP_URL", "amqp://guest:guest@localhost:5672/")
POSTGRES_URL = os.environ.get(
    "KUNPAY_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:54329/postgres"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0

# The tests' fast poll tiers (tests/integration/harness.py WORKER_ENV): a payment is checked
# 0.2 s after it was sent, so with a sandbox that settles at once it completes in about 0.2 s.
DEFAULT_POLL_DELAYS = [0.2, 0.4, 0.8, 1.6]

# Worker settings of every benchmark (the integration harness's, minus what tests need only).
# Secrets here are the sandbox's test values, not real ones.
BASE_WORKER_ENV: dict[str, str] = {
    "KUNPAY_COMMAND_RETRY_DELAYS": "[0.2, 0.5, 1]",
    "KUNPAY_OUTBOX_SWEEP_INTERVAL": "0.2",
    "KUNPAY_LOG_FORMAT": "json",
    "KUNPAY_LOG_LEVEL": "INFO",
    "KUNPAY_SHUTDOWN_GRACE": "5",
    "KUNPAY_PROVIDERS": json.dumps(
        {
            "MTN_CAMEROON": "MTN_MOMO",
            "ORANGE_CAMEROON": "ORANGE_MP",
            "PAWAPAY": "PAWAPAY",
            "FLUTTERWAVE": "FLUTTERWAVE",
        }
    ),
    "KUNPAY_PAWAPAY__API_TOKEN": "bench-pawapay-token",
    "KUNPAY_FLUTTERWAVE__SECRET_KEY": "FLWSECK_TEST-0123456789abcdef-X",
    "KUNPAY_FLUTTERWAVE__CUSTOMER_EMAIL": "payments@example.com",
    "KUNPAY_FLUTTERWAVE__WEBHOOK_SECRET_HASH": "bench-flutterwave-secret-hash",
    "KUNPAY_ORANGE_MP__CLIENT_ID": "bench-orange-client",
    "KUNPAY_ORANGE_MP__CLIENT_SECRET": "bench-orange-secret",
    "KUNPAY_ORANGE_MP__X_AUTH_TOKEN": "bench-orange-x-auth",
    "KUNPAY_ORANGE_MP__CHANNEL_USER_MSISDN": "691234567",
    "KUNPAY_ORANGE_MP__PIN": "2222",
    "KUNPAY_MTN_MOMO__CURRENCIES": '["XAF"]',
    "KUNPAY_MTN_MOMO__COLLECTION__SUBSCRIPTION_KEY": "bench-subscription-key",
    "KUNPAY_MTN_MOMO__COLLECTION__API_USER": "8f2c9a51-0d3e-4e21-9b7a-2c5d6e7f8a90",
    "KUNPAY_MTN_MOMO__COLLECTION__API_KEY": "bench-api-key",
    "KUNPAY_MTN_MOMO__DISBURSEMENT__SUBSCRIPTION_KEY": "bench-disbursement-key",
    "KUNPAY_MTN_MOMO__DISBURSEMENT__API_USER": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
    "KUNPAY_MTN_MOMO__DISBURSEMENT__API_KEY": "bench-disbursement-api-key",
    "KUNPAY_POLL__LATE_DELAYS": "[0.8, 1.6]",
    "KUNPAY_SERVER__COALESCE_WINDOW": "1",
    # The benchmark's app (the broker user guest) may pay out.
    "KUNPAY_APPS": json.dumps({"guest": {"payouts": True}}),
}

# Settings whose values the output states (the rest are credentials and provider wiring).
STATED_SETTINGS = (
    "KUNPAY_POLL__DELAYS",
    "KUNPAY_POLL__JANITOR_INTERVAL",
    "KUNPAY_POLL__LATE_DELAYS",
    "KUNPAY_JANITOR__SWEEP_INTERVAL",
    "KUNPAY_JANITOR__GRACE",
    "KUNPAY_JANITOR__BATCH",
    "KUNPAY_OUTBOX_SWEEP_INTERVAL",
    "KUNPAY_HTTP__TOTAL_TIMEOUT",
    "KUNPAY_HTTP__MAX_CONCURRENT_CALLS",
    "KUNPAY_PREFETCH",
    "KUNPAY_DATABASE_POOL_SIZE",
    "KUNPAY_SEND_LEASE",
    "KUNPAY_LOG_LEVEL",
    "KUNPAY_PUBLIC_BASE_URL",
)


def stated_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The worker settings a result states; unset ones are the worker's defaults."""
    defaults = {
        "KUNPAY_PREFETCH": f"{Settings.model_fields['prefetch'].default} (default)",
        "KUNPAY_HTTP__MAX_CONCURRENT_CALLS": (
            f"{HttpSettings.model_fields['max_concurrent_calls'].default} (default)"
        ),
        "KUNPAY_DATABASE_POOL_SIZE": "20 (default)",
        "KUNPAY_PUBLIC_BASE_URL": "unset: no callbacks requested",
        "KUNPAY_JANITOR__SWEEP_INTERVAL": "60 (default)",
        "KUNPAY_JANITOR__GRACE": "60 (default)",
        "KUNPAY_JANITOR__BATCH": "500 (default)",
        "KUNPAY_POLL__JANITOR_INTERVAL": "3600 (default)",
    }
    return {k: env.get(k, defaults.get(k, "default")) for k in STATED_SETTINGS}


console = Console(width=None if sys.stdout.isatty() else 140)
_T0 = time.perf_counter()


def step(text: str) -> None:
    """A progress line, with the seconds since the benchmark started."""
    console.print(f"[dim]{time.perf_counter() - _T0:7.1f}s {text}[/dim]")


# -- small helpers ------------------------------------------------------------------------------


async def run(*cmd: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    """Run a command to its end; its output, or RuntimeError with the output."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode()}")
    return out.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99 (linear interpolation), mean and max of ``values``; None when empty."""
    ordered = sorted(values)
    n = len(ordered)

    def q(p: float) -> float | None:
        if not ordered:
            return None
        pos = (n - 1) * p
        low = int(pos)
        high = min(low + 1, n - 1)
        return round(ordered[low] + (ordered[high] - ordered[low]) * (pos - low), 3)

    return {
        "n": n,
        "p50": q(0.50),
        "p95": q(0.95),
        "p99": q(0.99),
        "max": round(ordered[-1], 3) if ordered else None,
        "mean": round(sum(ordered) / n, 3) if ordered else None,
    }


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_mb": mem_kb // 1024,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
    }


def default_json_path(kind: str) -> Path:
    return RESULTS / f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- /proc --------------------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (None once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime field 14, stime field 15.
    return int(fields[11]) + int(fields[12])


def cpu_split(pid: int) -> tuple[int, int] | None:
    """(utime, stime) of ``pid`` in clock ticks: user space, and the kernel on its behalf."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]), int(fields[12])


def ticks_to_ms(ticks: float) -> float:
    return ticks * 1000.0 / CLK_TCK


def status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` figure of /proc/PID/status (VmHWM: peak RSS, VmRSS: RSS now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pids_named(comm: str) -> list[int]:
    """Processes whose command name is ``comm`` (beam.smp for RabbitMQ, postgres)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == comm:
                found.append(int(entry.name))
    return found


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


class CpuSampler:
    """Samples the CPU ticks of named processes (and the whole machine) every ``interval``
    seconds, so the CPU spent in any time window can be read afterwards."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.25) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.times: list[float] = []
        self.samples: list[dict[str, int]] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        ticks: dict[str, int] = {}
        for name, pid in self.pids.items():
            value = cpu_ticks(pid)
            if value is not None:
                ticks[name] = value
        busy, total = machine_ticks()
        ticks["<machine busy>"], ticks["<machine total>"] = busy, total
        self.times.append(time.perf_counter())
        self.samples.append(ticks)

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def at(self, name: str, moment: float) -> float:
        """Ticks of ``name`` at ``moment`` (perf_counter), interpolated between samples."""
        points = [(t, s[name]) for t, s in zip(self.times, self.samples, strict=True) if name in s]
        if not points:
            return 0.0
        times = [t for t, _ in points]
        i = bisect.bisect_left(times, moment)
        if i == 0:
            return float(points[0][1])
        if i >= len(points):
            return float(points[-1][1])
        (t0, v0), (t1, v1) = points[i - 1], points[i]
        return v0 + (v1 - v0) * (moment - t0) / (t1 - t0) if t1 > t0 else float(v1)

    def ms_between(self, name: str, start: float, end: float) -> float:
        return ticks_to_ms(self.at(name, end) - self.at(name, start))

    def machine_utilisation(self, start: float, end: float) -> float | None:
        """Share of all CPUs busy between ``start`` and ``end`` (0..1)."""
        busy = self.at("<machine busy>", end) - self.at("<machine busy>", start)
        total = self.at("<machine total>", end) - self.at("<machine total>", start)
        return round(busy / total, 3) if total > 0 else None


def other_cpu_ticks() -> dict[str, int]:
    """CPU ticks of the broker and database servers running on this machine (summed over
    their processes): they share the machine with kunpay, so they explain where time went."""
    totals: dict[str, int] = {}
    for name, comm in (("rabbitmq", "beam.smp"), ("postgres", "postgres")):
        totals[name] = sum(cpu_ticks(pid) or 0 for pid in pids_named(comm))
    return totals


# -- the broker ---------------------------------------------------------------------------------


@dataclass
class Vhost:
    name: str
    url: str

    @classmethod
    async def create(cls, amqp_url: str, prefix: str) -> Vhost:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await run("rabbitmqctl", "-q", "add_vhost", name)
        user = urlsplit(amqp_url).username or "guest"
        await run("rabbitmqctl", "-q", "set_permissions", "-p", name, user, ".*", ".*", ".*")
        parts = urlsplit(amqp_url)
        return cls(name, urlunsplit(parts._replace(path="/" + quote(name, safe=""))))

    async def delete(self) -> None:
        await run("rabbitmqctl", "-q", "delete_vhost", self.name)


# -- databases ----------------------------------------------------------------------------------


@dataclass
class Database:
    kind: str  # sqlite | postgres
    url: str
    admin_url: str | None = None  # postgres: where CREATE/DROP DATABASE is run
    name: str | None = None

    @classmethod
    async def create(cls, kind: str, directory: Path, postgres_url: str, label: str) -> Database:
        if kind == "sqlite":
            return cls(kind, f"sqlite://{directory / f'{label}.sqlite3'}")
        if kind != "postgres":
            raise ValueError(f"unknown database kind {kind!r}")
        name = f"kunpay_bench_{label}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        parts = urlsplit(postgres_url)
        return cls(kind, urlunsplit(parts._replace(path="/" + name)), postgres_url, name)

    async def drop(self) -> None:
        if self.kind == "postgres" and self.admin_url and self.name:
            conn = await asyncpg.connect(self.admin_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process the benchmark started, its log file, and its /proc figures."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_mb(self) -> float | None:
        kb = status_kb(self.pid, "VmHWM")
        return round(kb / 1024, 1) if kb is not None else None

    def rss_mb(self) -> float | None:
        kb = status_kb(self.pid, "VmRSS")
        return round(kb / 1024, 1) if kb is not None else None

    def cpu_ms(self) -> float | None:
        ticks = cpu_ticks(self.pid)
        return ticks_to_ms(ticks) if ticks is not None else None

    def kernel_share(self) -> float | None:
        """stime ÷ (utime + stime) over the process's life so far."""
        split = cpu_split(self.pid)
        if split is None or sum(split) == 0:
            return None
        return round(split[1] / sum(split), 3)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = {"event": line, "level": "raw"}
                if isinstance(record, dict):
                    records.append(record)
        return records

    def error_count(self) -> int:
        return sum(
            1 for r in self.log_records() if r.get("level") in ("error", "critical", "exception")
        )

    async def wait_log(self, event: str, timeout: float = START_TIMEOUT) -> None:
        """Until the JSON log has a record whose ``event`` is ``event``; RuntimeError when the
        process exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.log.read_text(errors="replace").splitlines():
                    if event in line:
                        with contextlib.suppress(ValueError):
                            if json.loads(line).get("event") == event:
                                return
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {event!r} within {timeout}s:\n{self.tail()}")

    async def stop(self, timeout: float = 20) -> int | None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return None


async def spawn(name: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> Proc:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=ROOT,
        )
    return Proc(name, proc, log)


def worker_cli() -> list[str]:
    return [sys.executable, "-m", "kunpay_worker.cli"]


_LATENCY_OPTION: bool | None = None


async def sandbox_has_latency_option() -> bool:
    """Whether ``kunpay-worker sandbox`` takes ``--latency`` (SandboxConfig.latency_seconds)."""
    global _LATENCY_OPTION
    if _LATENCY_OPTION is None:
        text = await run(
            *worker_cli(), "sandbox", "--help", env={"COLUMNS": "200", "NO_COLOR": "1"}
        )
        _LATENCY_OPTION = "--latency" in text
    return _LATENCY_OPTION


async def start_sandbox(
    directory: Path,
    *,
    latency: float,
    settle: float,
    callback_method: str = "PUT",
) -> tuple[Proc, str]:
    """The provider sandbox as a process of its own; (process, base URL)."""
    args = [
        *worker_cli(),
        "sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port := free_port()),
        "--settle-seconds",
        str(settle),
        "--balance",
        "1000000000000",
        "--callback-method",
        callback_method,
    ]
    if await sandbox_has_latency_option():
        args += ["--latency", str(latency)]
    elif latency:
        raise RuntimeError(
            "this kunpay-worker sandbox has no --latency option (SandboxConfig.latency_seconds) "
            "yet: run with --provider-latency 0"
        )
    sandbox = await spawn("sandbox", args, {}, directory / "sandbox.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            try:
                async with http.get(f"{url}/_sandbox/health") as resp:
                    if resp.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            if sandbox.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not start:\n{sandbox.tail()}")
            await asyncio.sleep(0.1)
    return sandbox, url


def worker_env(
    *,
    amqp_url: str,
    database_url: str,
    sandbox_url: str,
    poll_delays: Sequence[float],
    provider_latency: float,
    overrides: Mapping[str, str],
) -> dict[str, str]:
    """The environment of every worker of a run (each adds its own server port)."""
    # The provider timeout must outlive the sandbox's delay, and the send lease the timeout.
    total_timeout = max(5.0, 3 * provider_latency + 5)
    return {
        **BASE_WORKER_ENV,
        "KUNPAY_AMQP_URL": amqp_url,
        "KUNPAY_DATABASE_URL": database_url,
        "KUNPAY_MTN_MOMO__BASE_URL": sandbox_url,
        "KUNPAY_PAWAPAY__BASE_URL": sandbox_url,
        "KUNPAY_FLUTTERWAVE__BASE_URL": sandbox_url,
        "KUNPAY_ORANGE_MP__BASE_URL": sandbox_url,
        "KUNPAY_SERVER__HOST": "127.0.0.1",
        "KUNPAY_POLL__DELAYS": json.dumps(list(poll_delays)),
        "KUNPAY_HTTP__TOTAL_TIMEOUT": str(total_timeout),
        "KUNPAY_HTTP__CONNECT_TIMEOUT": "2",
        "KUNPAY_SEND_LEASE": str(total_timeout + 5),
        **overrides,
    }


async def migrate(env: Mapping[str, str]) -> None:
    await run(*worker_cli(), "migrate", env=env)


async def start_worker(
    directory: Path, index: int, env: Mapping[str, str], *, callbacks: bool
) -> Proc:
    """A ``kunpay-worker run`` process with its own HTTP port, once it logged "worker ready"."""
    port = free_port()
    own = {**env, "KUNPAY_SERVER__PORT": str(port)}
    if callbacks:
        own["KUNPAY_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    worker = await spawn(
        f"worker-{index}", [*worker_cli(), "run"], own, directory / f"worker-{index}.log"
    )
    worker.extra["port"] = port
    try:
        await worker.wait_log("worker ready")
    except BaseException:
        await worker.stop(5)
        raise
    return worker


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` worker settings from the command line."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("KUNPAY_"):
            raise SystemExit(f"--worker-env takes KUNPAY_NAME=VALUE, not {pair!r}")
        overrides[key] = value
    return overrides
