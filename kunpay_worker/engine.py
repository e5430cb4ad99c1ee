"""Moving a PENDING transaction forward: claim, send, look up, record (DESIGN.md §5 steps 3-6).

The command handler calls :meth:`Engine.after_intake`; the poll handler calls
:meth:`Engine.check`. Both only ever act through compare-and-set writes in the repository, so a
redelivered command, a poll and a concurrent worker can race without a second charge:

* only the delivery that wins ``initiation NEW → SENDING`` calls the provider;
* a ``SENDING`` claim whose lease expired, or an ``UNKNOWN`` send, is looked up first, and sent
  again only when the backend de-duplicates by reference and says it never saw it;
* every answer is recorded together with the next poll, then the message is acked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from kunpay_sdk.contracts import Status
from kunpay_worker.domain.schedule import next_poll_delay, retry_delay
from kunpay_worker.providers.base import (
    CollectionBackend,
    CollectionRequest,
    Lookup,
    ProviderStatus,
)
from kunpay_worker.providers.errors import (
    ProviderError,
    ProviderNotReached,
    ProviderRefused,
    ProviderThrottled,
)
from kunpay_worker.settings import Settings
from kunpay_worker.storage import repository as repo
from kunpay_worker.storage.models import Initiation, Transaction

__all__ = ["Engine"]

log = structlog.get_logger("kunpay.engine")

_OBSERVED = {
    ProviderStatus.PENDING: Status.PENDING,
    ProviderStatus.COMPLETED: Status.COMPLETED,
    ProviderStatus.FAILED: Status.FAILED,
}


@dataclass
class Engine:
    settings: Settings
    backends: dict[str, CollectionBackend]
    plan: repo.PollPlan
    notify: Callable[[], None]

    # -- entry points ------------------------------------------------------------------------

    async def after_intake(self, tx: Transaction) -> None:
        """Command path: send if nobody has; otherwise make sure a check is coming."""
        if tx.status is not Status.PENDING:
            return
        if tx.initiation is Initiation.NEW:
            await self._send(tx)
        else:
            # A redelivery or a duplicate: whoever sent it is done or holds the claim.
            await self._ensure_check(tx)

    async def check(self, tx_id: uuid.UUID, poll_seq: int) -> None:
        """Poll path: one scheduled check of a PENDING transaction."""
        tx = await repo.load(tx_id)
        if tx is None or tx.status is not Status.PENDING or tx.poll_seq != poll_seq:
            log.debug("stale or settled poll dropped", transaction_id=str(tx_id), poll_seq=poll_seq)
            return
        if tx.initiation is Initiation.NEW:
            await self._send(tx)
        elif tx.initiation is Initiation.SENDING and not _lease_expired(tx):
            # Someone is mid-call; look once their lease could have run out.
            remaining = (tx.send_lease_until - _now()).total_seconds()  # type: ignore[operator]
            await self._schedule(tx, max(remaining, 0.0) + 0.05)
        elif tx.initiation in (Initiation.SENDING, Initiation.UNKNOWN):
            await self._resolve_unknown(tx, poll_seq)
        elif tx.initiation is Initiation.SENT:
            await self._look_up(tx, poll_seq)

    # -- steps -------------------------------------------------------------------------------

    def _backend(self, tx: Transaction) -> CollectionBackend:
        if tx.backend is None:
            raise RuntimeError(f"PENDING transaction {tx.id} has no backend")
        return self.backends[tx.backend]

    async def _send(self, tx: Transaction) -> None:
        """Claim and send. ``tx`` is the state the decision to send was taken on."""
        expected = tx.initiation
        claimed = await repo.claim_send(tx.id, expected, tx.send_attempts, self.settings.send_lease)
        if claimed is None:
            # Another delivery holds (or finished) the send: just make sure a check follows.
            await self._ensure_check(tx)
            return
        fence = claimed.send_attempts
        resend = expected is not Initiation.NEW
        bound = log.bind(transaction_id=str(tx.id), backend=tx.backend, send_attempt=fence)
        if claimed.provider_reference is None:
            raise RuntimeError(f"PENDING transaction {tx.id} has no provider reference")
        request = CollectionRequest(
            transaction_id=str(claimed.id),
            reference=claimed.provider_reference,
            amount=claimed.amount,
            currency=claimed.currency,
            msisdn=claimed.phone_number.removeprefix("+"),
            message=f"{self.settings.mtn_momo.payer_message} {claimed.order_id}"[:160],
            callback_url=self._callback_url(claimed),
        )
        next_check = self._next_delay(claimed)
        try:
            # Never outlive the claim: past the lease, another delivery may take over.
            async with asyncio.timeout(self.settings.send_lease * 0.9):
                result = await self._backend(claimed).request_collection(request)
        except ProviderRefused as exc:
            reason = exc.provider_code or f"HTTP_{exc.http_status}"
            if resend:
                # A refused copy proves nothing about the first send, which may be registering.
                bound.warning("resend refused; looking the first one up", reason=reason)
                await repo.record_sent(claimed.id, fence, Initiation.UNKNOWN, next_check, self.plan)
            else:
                bound.info("provider refused", reason=reason)
                await repo.record_refused(claimed.id, fence, reason)
        except ProviderNotReached as exc:
            throttled = isinstance(exc, ProviderThrottled)
            if not resend and not throttled and fence >= self.settings.max_send_attempts:
                # Every attempt certainly failed to arrive, so failing is safe: nothing charged.
                bound.warning("provider unreachable, giving up", error=str(exc))
                await repo.fail_unsent(claimed.id, fence, f"PROVIDER_UNREACHABLE: {exc}"[:500])
            else:
                delay = (
                    exc.retry_after
                    if isinstance(exc, ProviderThrottled) and exc.retry_after is not None
                    else retry_delay(fence, self.settings.command_retry_delays)
                )
                bound.warning("provider not reached; will send again", error=str(exc), delay=delay)
                await repo.record_sent(
                    claimed.id,
                    fence,
                    Initiation.UNKNOWN if resend else Initiation.NEW,
                    delay,
                    self.plan,
                    uncount=throttled,
                )
        except (ProviderError, TimeoutError) as exc:
            # Timeout, 5xx, dropped connection, unreadable answer: it may have been processed.
            bound.warning("send outcome unknown; will look it up", error=str(exc) or repr(exc))
            await repo.record_sent(
                claimed.id, fence, Initiation.UNKNOWN, next_check or self.plan.delays[0], self.plan
            )
        else:
            # DUPLICATE: the provider already had this reference, so an earlier send landed.
            bound.info("sent", result=str(result))
            await repo.record_sent(claimed.id, fence, Initiation.SENT, next_check, self.plan)
        self.notify()

    async def _resolve_unknown(self, tx: Transaction, poll_seq: int) -> None:
        """The last send's outcome is unknown: ask the provider before anything else."""
        lookup = await self._lookup(tx, poll_seq)
        if lookup is None:
            return
        if lookup.found:
            await self._record(tx, poll_seq, lookup)
            return
        if not self._backend(tx).dedupes_by_reference:
            await self._record(tx, poll_seq, None)
            return
        if tx.send_attempts < self.settings.max_send_attempts:
            # The provider never registered the reference and would drop a duplicate: resend.
            # The claim is fenced by the attempts seen before the lookup, so a lookup that
            # raced with someone else's resend cannot send again.
            await self._send(tx)
            return
        await self._record(
            tx,
            poll_seq,
            None,
            give_up=f"NOT_REGISTERED: {tx.backend} never registered the request "
            f"after {tx.send_attempts} attempts",
        )

    async def _look_up(self, tx: Transaction, poll_seq: int) -> None:
        lookup = await self._lookup(tx, poll_seq)
        if lookup is None:
            return
        if not lookup.found:
            log.warning("provider does not know a sent reference", transaction_id=str(tx.id))
            await self._record(tx, poll_seq, None)
            return
        await self._record(tx, poll_seq, lookup)

    async def _lookup(self, tx: Transaction, poll_seq: int) -> Lookup | None:
        if tx.provider_reference is None:
            raise RuntimeError(f"PENDING transaction {tx.id} has no provider reference")
        try:
            return await self._backend(tx).lookup_collection(tx.provider_reference, str(tx.id))
        except ProviderError as exc:
            log.warning("status lookup failed", transaction_id=str(tx.id), error=str(exc))
            await self._record(tx, poll_seq, None)
            return None

    async def _record(
        self, tx: Transaction, poll_seq: int, lookup: Lookup | None, *, give_up: str | None = None
    ) -> None:
        """Record one check: the provider's answer (None: no usable answer) and the next."""
        observation = None
        if lookup is not None and lookup.found and lookup.status is not None:
            observation = repo.Observation(
                status=_OBSERVED[lookup.status],
                reason=lookup.reason,
                provider_transaction_id=lookup.provider_transaction_id,
            )
        event = await repo.record_check(
            tx.id,
            poll_seq,
            observation,
            plan=self.plan,
            found_reference=lookup is not None and lookup.found,
            give_up=give_up,
        )
        if event is not None:
            log.info(
                "transaction settled",
                transaction_id=str(tx.id),
                status=str(event.transaction.status) if event.transaction else None,
                reason=event.reason,
            )
        self.notify()

    async def _ensure_check(self, tx: Transaction) -> None:
        delay = self._next_delay(tx) or self.plan.delays[0]
        if await repo.schedule_poll(tx.id, delay, self.plan, unless_due_sooner=True):
            self.notify()

    async def _schedule(self, tx: Transaction, delay: float) -> None:
        if await repo.schedule_poll(tx.id, delay, self.plan):
            self.notify()

    # -- helpers -----------------------------------------------------------------------------

    def _next_delay(self, tx: Transaction) -> float | None:
        return next_poll_delay(tx.poll_count, self.plan.delays)

    def _callback_url(self, tx: Transaction) -> str | None:
        base = self.settings.public_base_url
        if not base:
            return None
        return f"{base.rstrip('/')}/payments/momo/collection/webhook/"


def _now() -> datetime:
    return datetime.now(UTC)


def _lease_expired(tx: Transaction) -> bool:
    return tx.send_lease_until is None or tx.send_lease_until < _now()
