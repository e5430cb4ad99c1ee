"""Moving a transaction forward: claim, send, look up, record (DESIGN.md §5 steps 3-6).

The command handlers call :meth:`Engine.after_intake`; the poll handler calls
:meth:`Engine.check`; ``verify()`` calls :meth:`Engine.verify`. All act only through
compare-and-set writes in the repository, so a redelivered command, a poll and a concurrent
worker can race without a second charge:

* only the delivery that wins ``initiation NEW → SENDING`` calls the provider, and the claim's
  attempt number fences every write that records the answer;
* a ``SENDING`` claim whose lease expired, or an ``UNKNOWN`` send, is looked up first, and sent
  again only when the backend de-duplicates by reference and says it never saw it; a backend that
  does not de-duplicate is polled until the schedule ends, then the transaction FAILS with
  ``UNKNOWN_OUTCOME`` and is flagged for reconciliation;
* every answer is recorded together with the next check, then the message is acked.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

import structlog

from kunpay_sdk.contracts import Status, TransactionType
from kunpay_sdk.msisdn import parse_msisdn
from kunpay_worker.domain.schedule import next_poll_delay, retry_delay
from kunpay_worker.providers.base import Backend, Lookup, MoneyRequest, ProviderStatus
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


def _observation(lookup: Lookup) -> repo.Observation | None:
    if not lookup.found or lookup.status is None:
        return None
    return repo.Observation(
        status=_OBSERVED[lookup.status],
        reason=lookup.reason,
        provider_transaction_id=lookup.provider_transaction_id,
        handle=lookup.handle,
    )


P = ParamSpec("P")
R = TypeVar("R")


def _step(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """An entry point: the provider exchanges it makes are stored with the state change they
    lead to (repository.attempts_held)."""

    @functools.wraps(method)
    async def step(*args: P.args, **kwargs: P.kwargs) -> R:
        async with repo.attempts_held():
            return await method(*args, **kwargs)

    return step


@dataclass
class Engine:
    settings: Settings
    backends: dict[str, Backend]
    plan: repo.PollPlan
    notify: Callable[[], None]

    # -- entry points ------------------------------------------------------------------------

    def intake_claim(self, backend: str | None) -> float | None:
        """The send lease to claim in the intake's own DB transaction for a new row on
        ``backend``, or None to claim it when sending (one commit more per payment).

        A delivery that stops between the intake and the send then leaves the row SENDING,
        where it used to leave it NEW, and its check asks the provider once the lease has run
        out, before sending anything. That is safe only where an unsent request can be told
        from a sent one: the provider de-duplicates by reference (not found: send), or gives
        its key before the send (no key: nothing left). Elsewhere (Flutterwave) an unknown
        send is never repeated, so the claim waits for the send."""
        found = self.backends.get(backend) if backend is not None else None
        if found is None or not (found.dedupes_by_reference or found.needs_prepare):
            return None
        return self.settings.send_lease

    @_step
    async def after_intake(self, tx: Transaction, *, claimed: bool = False) -> Transaction | None:
        """Command path: send if nobody has; otherwise make sure a check is coming.
        ``claimed``: the intake created the row with the send claimed (intake_claim).

        Returns the row as this delivery last wrote or read it (for the canonical log line),
        or None when it does not know (the caller reads it again)."""
        if tx.status is not Status.PENDING:
            return tx
        if claimed:
            return await self._send(tx, claimed=tx)
        if tx.initiation is Initiation.NEW and not _waiting(tx):
            return await self._send(tx)
        # A redelivery or a duplicate: whoever sent it is done or holds the claim.
        await self._ensure_check(tx)
        return None

    @_step
    async def check(self, tx_id: uuid.UUID, poll_seq: int) -> None:
        """Poll path: one scheduled check."""
        tx = await repo.load(tx_id)
        if tx is None or tx.poll_seq != poll_seq:
            log.debug("stale poll dropped", transaction_id=str(tx_id), poll_seq=poll_seq)
            return
        log.debug("checking", transaction_id=str(tx_id), poll_seq=poll_seq)
        if tx.status is Status.FAILED:
            await self._late_check(tx, poll_seq)
            return
        if tx.status is not Status.PENDING:
            return
        if tx.initiation is Initiation.NEW:
            if _waiting(tx):
                await self._schedule(tx, _seconds_until(tx.send_after) + 0.05)
            else:
                await self._send(tx)
        elif tx.initiation is Initiation.SENDING and not _lease_expired(tx):
            # Someone is mid-call; look once their lease could have run out.
            await self._schedule(tx, _seconds_until(tx.send_lease_until) + 0.05)
        elif tx.initiation in (Initiation.SENDING, Initiation.UNKNOWN):
            await self._resolve_unknown(tx, poll_seq)
        elif tx.initiation is Initiation.SENT:
            await self._look_up(tx, poll_seq)

    @_step
    async def verify(self, tx_id: uuid.UUID) -> Transaction | None:
        """Ask the provider about a transaction now and apply a final answer (verify())."""
        tx = await repo.load(tx_id)
        if tx is None:
            return None
        sent = tx.initiation is Initiation.SENT or (
            tx.initiation in (Initiation.SENDING, Initiation.UNKNOWN) and _lease_expired(tx)
        )
        checkable = tx.status is Status.PENDING or (
            tx.status is Status.FAILED and tx.type is TransactionType.COLLECTION
        )
        if sent and checkable and tx.backend in self.backends:
            lookup = await self._backend(tx).lookup(await self._request(tx))
            observation = _observation(lookup)
            if observation is not None and await repo.apply_observation(
                tx.id, observation, found_reference=lookup.found, plan=self.plan
            ):
                self.notify()
        return await repo.load(tx_id)

    @_step
    async def check_now(self, tx_id: uuid.UUID) -> bool:
        """A provider's callback said something happened: ask the provider (the callback is
        only a hint) and apply a final answer. The poll chain goes on regardless.

        False when the request is still being sent (a fast provider calls back before the
        send's answer is recorded): the caller asks again shortly."""
        tx = await repo.load(tx_id)
        if (
            tx is not None
            and tx.status is Status.PENDING
            and tx.initiation is Initiation.SENDING
            and not _lease_expired(tx)
        ):
            log.info("callback before the send was recorded; checking again shortly")
            return False
        try:
            tx = await self.verify(tx_id)
        except ProviderError as exc:
            log.warning("check on a callback failed", transaction_id=str(tx_id), error=str(exc))
            return True
        log.info(
            "checked on a callback",
            transaction_id=str(tx_id),
            status=str(tx.status) if tx is not None else None,
        )
        return True

    @_step
    async def recheck_before_retry(self, tx_id: uuid.UUID) -> None:
        """A retry is about to be taken in: ask the provider about the FAILED original first
        (it may have completed late). Errors leave the original as it is."""
        tx = await repo.load(tx_id)
        if tx is None or tx.status is not Status.FAILED:
            return
        if tx.initiation is not Initiation.SENT and not tx.needs_reconciliation:
            return  # refused or never sent: nothing at the provider to complete late
        if tx.backend not in self.backends:
            return
        try:
            lookup = await self._backend(tx).lookup(await self._request(tx))
        except ProviderError as exc:
            log.warning("could not recheck the original", transaction_id=str(tx_id), error=str(exc))
            return
        observation = _observation(lookup)
        if observation is not None and await repo.apply_observation(
            tx.id, observation, found_reference=True, plan=self.plan
        ):
            self.notify()

    # -- steps -------------------------------------------------------------------------------

    def _backend(self, tx: Transaction) -> Backend:
        if tx.backend is None or tx.backend not in self.backends:
            raise RuntimeError(f"transaction {tx.id} has no usable backend ({tx.backend})")
        return self.backends[tx.backend]

    async def _request(self, tx: Transaction) -> MoneyRequest:
        if tx.provider_reference is None:
            raise RuntimeError(f"transaction {tx.id} has no provider reference")
        original = await repo.load(tx.original_id) if tx.type is TransactionType.REFUND else None  # type: ignore[attr-defined]
        message = f"{self.settings.payment_message} {tx.order_id}"[:160]
        return MoneyRequest(
            kind=tx.type,
            transaction_id=str(tx.id),
            reference=tx.provider_reference,
            amount=tx.amount,
            currency=tx.currency,
            msisdn=tx.phone_number.removeprefix("+"),
            operator=_operator(tx.phone_number),
            message=message,
            callback_url=self._callback_url(tx),
            handle=tx.provider_handle,
            original_reference=original.provider_reference if original else None,
            original_handle=(original.provider_handle or original.provider_transaction_id)
            if original
            else None,
            original_amount=original.amount if original else None,
        )

    async def _send(
        self, tx: Transaction, *, claimed: Transaction | None = None
    ) -> Transaction | None:
        """Claim and send. ``tx`` is the state the decision to send was taken on; ``claimed``,
        a row the intake created with its first send claimed. Returns the row as the send's
        answer was recorded, or None (claim lost, or no row at hand)."""
        if claimed is not None:
            expected = Initiation.NEW
        else:
            expected = tx.initiation
            claimed = await repo.claim_send(
                tx.id, expected, tx.send_attempts, self.settings.send_lease, seen=tx
            )
            if claimed is None:
                # Another delivery holds (or finished) the send: just make sure a check follows.
                await self._ensure_check(tx)
                return None
        fence = claimed.send_attempts
        resend = expected is not Initiation.NEW
        # Never outlive the claim: past the lease, another delivery may take over. The lease
        # started before the claim's commit (at the intake, for a claim made there).
        budget = _seconds_until(claimed.send_lease_until) - 0.1 * self.settings.send_lease
        if budget <= 0:
            log.warning("send claim ran out before sending", transaction_id=str(tx.id))
            await self._schedule(claimed, _seconds_until(claimed.send_lease_until) + 0.05)
            return None
        backend = self._backend(claimed)
        if resend and backend.needs_prepare and claimed.provider_handle is not None:
            # A key appeared since we decided (a late holder of an expired claim got it): the
            # money request may be out. Look it up; never pay with it a second time.
            await repo.record_sent(
                claimed.id,
                fence,
                Initiation.UNKNOWN,
                self.plan.delays[0],
                self.plan,
                claimed=claimed,
            )
            self.notify()
            return None
        recorded: Transaction | None = None
        bound = log.bind(transaction_id=str(tx.id), backend=tx.backend, send_attempt=fence)
        request = await self._request(claimed)
        next_check = self._next_delay(claimed)
        try:
            async with asyncio.timeout(budget):
                if not resend and claimed.type is TransactionType.DISBURSEMENT:
                    reason = await backend.preflight(request)
                    if reason is not None:
                        bound.info("payout refused before sending", reason=reason)
                        await repo.fail_unsent(claimed.id, fence, reason)
                        self.notify()
                        return None
                if backend.needs_prepare and request.handle is None:
                    handle = await backend.prepare(request)
                    if not await repo.record_handle(claimed.id, fence, handle):
                        return None  # the claim was lost: the taker carries on
                    # Committed under our claim: the row now holds exactly this key.
                    claimed.provider_handle = handle
                    request = await self._request(claimed)
                receipt = await backend.send(request)
        except ProviderRefused as exc:
            reason = exc.provider_code or f"HTTP_{exc.http_status}"
            if resend:
                # A refused copy proves nothing about the first send, which may be registering.
                bound.warning("resend refused; looking the first one up", reason=reason)
                recorded = await repo.record_sent(
                    claimed.id, fence, Initiation.UNKNOWN, next_check, self.plan, claimed=claimed
                )
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
                recorded = await repo.record_sent(
                    claimed.id,
                    fence,
                    Initiation.UNKNOWN if resend else Initiation.NEW,
                    delay,
                    self.plan,
                    uncount=throttled,
                    claimed=claimed,
                )
        except (ProviderError, TimeoutError) as exc:
            # Timeout, 5xx, dropped connection, unreadable answer: it may have been processed.
            bound.warning("send outcome unknown; will look it up", error=str(exc) or repr(exc))
            recorded = await repo.record_sent(
                claimed.id,
                fence,
                Initiation.UNKNOWN,
                next_check or self.plan.delays[0],
                self.plan,
                claimed=claimed,
            )
        else:
            # DUPLICATE: the provider already had this reference, so an earlier send landed.
            bound.debug("sent", result=str(receipt.result))
            recorded = await repo.record_sent(
                claimed.id,
                fence,
                Initiation.SENT,
                next_check,
                self.plan,
                handle=receipt.handle,
                claimed=claimed,
            )
        self.notify()
        return recorded

    async def _resolve_unknown(self, tx: Transaction, poll_seq: int) -> None:
        """The last send's outcome is unknown: ask the provider before anything else."""
        backend = self._backend(tx)
        if backend.needs_prepare and tx.provider_handle is None:
            # The provider never gave us its key, so the money request never left: it is a
            # first send again (and counts toward the limit like one).
            if await repo.reset_unsent(tx.id, tx.initiation, tx.send_attempts):
                fresh = await repo.load(tx.id)
                if fresh is not None:
                    await self._send(fresh)
            return
        lookup = await self._lookup(tx, poll_seq)
        if lookup is None:
            return
        if lookup.found:
            await self._record(tx, poll_seq, lookup)
            return
        if not backend.dedupes_by_reference:
            # Never resent: a second request could charge twice. Poll until the schedule ends.
            await self._record(
                tx,
                poll_seq,
                None,
                give_up=f"UNKNOWN_OUTCOME: {tx.backend} never confirmed the outcome of the "
                "request; reconcile with the provider",
                reconcile=True,
            )
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

    async def _late_check(self, tx: Transaction, poll_seq: int) -> None:
        """A FAILED collection: did the provider complete it after all?"""
        if tx.type is not TransactionType.COLLECTION or tx.backend not in self.backends:
            return
        try:
            lookup = await self._backend(tx).lookup(await self._request(tx))
        except ProviderError as exc:
            log.warning("late check failed", transaction_id=str(tx.id), error=str(exc))
            lookup = Lookup(found=False)
        observation = _observation(lookup)
        event = await repo.record_late_check(tx.id, poll_seq, observation, plan=self.plan)
        if event is not None:
            log.warning("provider completed a FAILED payment late", transaction_id=str(tx.id))
        self.notify()

    async def _lookup(self, tx: Transaction, poll_seq: int) -> Lookup | None:
        try:
            return await self._backend(tx).lookup(await self._request(tx))
        except ProviderThrottled as exc:
            # 429, an open circuit, no free call slot: the provider was not asked, so this
            # check does not count: the same check, later.
            delay = exc.retry_after or retry_delay(1, self.settings.command_retry_delays)
            log.info("status lookup deferred", transaction_id=str(tx.id), delay=delay)
            if await repo.repeat_check(tx.id, poll_seq, delay, self.plan):
                self.notify()
            return None
        except ProviderError as exc:
            log.warning("status lookup failed", transaction_id=str(tx.id), error=str(exc))
            await self._record(tx, poll_seq, None)
            return None

    async def _record(
        self,
        tx: Transaction,
        poll_seq: int,
        lookup: Lookup | None,
        *,
        give_up: str | None = None,
        reconcile: bool = False,
    ) -> None:
        """Record one check: the provider's answer (None: no usable answer) and the next."""
        event = await repo.record_check(
            tx.id,
            poll_seq,
            _observation(lookup) if lookup is not None else None,
            plan=self.plan,
            found_reference=lookup is not None and lookup.found,
            give_up=give_up,
            reconcile=reconcile,
            seen=tx,
        )
        if event is not None:
            log.debug(
                "transaction settled",
                transaction_id=str(tx.id),
                status=str(event.transaction.status) if event.transaction else None,
                reason=event.reason,
            )
        log.debug("check recorded", transaction_id=str(tx.id), poll_seq=poll_seq)
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
        if not base or tx.backend is None:
            return None
        path = CALLBACK_PATHS.get((tx.backend, tx.type))
        if path is None:
            return None
        # The reference rides in the URL: MTN's callback body may not name it.
        return f"{base.rstrip('/')}{path}?reference={tx.provider_reference}"


# The webhook paths (the old package's), per backend and transaction type.
CALLBACK_PATHS: dict[tuple[str, TransactionType], str] = {
    ("MTN_MOMO", TransactionType.COLLECTION): "/payments/momo/collection/webhook/",
    ("MTN_MOMO", TransactionType.DISBURSEMENT): "/payments/momo/disbursement/webhook/",
    ("MTN_MOMO", TransactionType.REFUND): "/payments/momo/disbursement/webhook/",
    ("PAWAPAY", TransactionType.COLLECTION): "/payments/pawapay/webhook/",
    ("PAWAPAY", TransactionType.DISBURSEMENT): "/payments/pawapay/webhook/",
    ("PAWAPAY", TransactionType.REFUND): "/payments/pawapay/webhook/",
    ("FLUTTERWAVE", TransactionType.COLLECTION): "/payments/flutterwave/webhook/",
    ("FLUTTERWAVE", TransactionType.REFUND): "/payments/flutterwave/webhook/",
    ("ORANGE_MP", TransactionType.COLLECTION): "/payments/orange/webhook/",
}


def _operator(e164: str) -> str:
    try:
        return str(parse_msisdn(e164, sandbox=True).operator)
    except ValueError:
        return ""


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds_until(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return max((moment - _now()).total_seconds(), 0.0)


def _lease_expired(tx: Transaction) -> bool:
    return tx.send_lease_until is None or tx.send_lease_until < _now()


def _waiting(tx: Transaction) -> bool:
    return tx.send_after is not None and tx.send_after > _now()
