"""The janitor: re-schedules overdue checks, and gives up on payments that stay PENDING.

Every worker runs one; a database lease makes sure only one sweeps at a time. A PENDING
transaction whose ``next_poll_at`` is overdue — its poll message lost (a purged delay queue), or
its check schedule spent (``next_poll_at`` then moves an hour at a time) — gets a check now. One
older than ``KUNPAY_JANITOR__MAX_AGE`` is flagged ``stale`` instead: no more checks, listed by
``kunpay-worker pending --stale``, settled by ``kunpay-worker resolve``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable

import structlog

from kunpay_worker.settings import JanitorSettings
from kunpay_worker.storage import db
from kunpay_worker.storage import repository as repo

__all__ = ["Janitor"]

log = structlog.get_logger("kunpay.janitor")

LEASE = "janitor"


class Janitor:
    def __init__(
        self, settings: JanitorSettings, plan: repo.PollPlan, notify: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.notify = notify
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:64]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception as exc:  # the janitor outlives a database outage
                if not db.unavailable(exc):
                    log.exception("janitor sweep failed; trying again at the next one")
                else:
                    log.warning("database unavailable; the janitor tries again", error=repr(exc))
            try:
                async with asyncio.timeout(self.settings.sweep_interval):
                    await stop.wait()
            except TimeoutError:
                pass

    async def release(self) -> None:
        """Let another worker sweep at once (this one is stopping)."""
        try:
            await repo.release_lease(LEASE, self.holder)
        except Exception:  # noqa: BLE001 - the lease runs out by itself
            log.warning("could not release the janitor lease; it expires by itself")

    async def sweep(self) -> Counter[str]:
        """One sweep, if this worker holds the lease; what happened to each overdue row."""
        done: Counter[str] = Counter()
        if not await repo.acquire_lease(LEASE, self.holder, self.settings.lease):
            return done
        for tx_id in await repo.overdue(self.settings.grace, self.settings.batch):
            outcome = await repo.reschedule_overdue(
                tx_id, grace=self.settings.grace, max_age=self.settings.max_age, plan=self.plan
            )
            done[outcome] += 1
            if outcome == "stale":
                log.warning("gave up checking a PENDING payment: stale", transaction_id=str(tx_id))
            elif outcome == "rescheduled":
                log.info("janitor rescheduled a check", transaction_id=str(tx_id))
        if done["rescheduled"]:
            self.notify()
        return done
