"""Sampling profiles of the worker during a benchmark (``e2e.py --profile DIR``), with py-spy
when it is installed (``pip install py-spy``; not a dependency of kunpay).

py-spy writes collapsed stacks (``--format raw``: one line per distinct stack, frames separated
by ``;``, then the sample count). Stacks that end waiting (the event loop's epoll, aiosqlite's
thread between queries) are left out. Time in C code (sqlite3, the kernel) shows in the Python
frame that called it. ``python -m benchmarks.profiles FILE [--per N]`` prints the
functions with the most samples, inclusive (the function and what it calls) and self, as
milliseconds per completed payment when ``--per`` gives the number of payments.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

RATE = 200  # samples per second
# Leaf frames of a thread that waits rather than works (py-spy cannot always tell from inside
# a container): the event loop's epoll wait, aiosqlite's thread waiting for its next query.
IDLE_LEAVES = frozenset(
    {"selectors.py:EpollSelector.select", "aiosqlite/core.py:_connection_worker_thread"}
)


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Recorder:
    """``py-spy record`` attached to one process until :meth:`stop`."""

    def __init__(self, proc: asyncio.subprocess.Process, output: Path) -> None:
        self.proc = proc
        self.output = output

    @classmethod
    async def attach(cls, pid: int, output: Path) -> Recorder:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        proc = await asyncio.create_subprocess_exec(
            binary,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(proc, output)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(30):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    """``function (path/to/module.py:12)`` → ``module.py:function`` (the line dropped)."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{file}:{match.group('func')}"


def summarise(
    path: Path, top: int = 30
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top inclusive, top self) of a collapsed-stacks file."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";") if f.strip()]
        # py-spy prefixes the thread ("process 12:\"python\"", "thread (0x..)"): not frames.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or frames[-1] in IDLE_LEAVES:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    return total, inclusive.most_common(top), own.most_common(top)


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.profiles")
    parser.add_argument("file", type=Path)
    parser.add_argument("--per", type=int, default=0, help="completed payments in the profile")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    total, inclusive, own = summarise(args.file, args.top)
    scale = 1000 / RATE / args.per if args.per else None
    print(f"{total} samples at {RATE}/s ({total / RATE:.1f} s of CPU-or-waiting stacks)")
    for title, rows in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        for name, count in rows:
            per = f"{count * scale:7.3f} ms/payment" if scale else ""
            print(f"  {count / total:6.1%} {per}  {name}")


if __name__ == "__main__":
    main()
