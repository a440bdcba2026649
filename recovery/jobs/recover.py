"""recover_kpi_red_leads: drain the red-KPI queue, one transaction per batch, with 1..N worker processes.

Each batch claims pending rows (FOR UPDATE SKIP LOCKED, newest lead first), resolves them through
identity.resolution, marks the rows and records the attempts, all in one transaction: a crash
loses the batch in flight and leaves nothing half-written, and no two workers take the same lead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as stdlib_queue
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction

from identity.models import JobRun, ReasonCode
from identity.resolution import (
    ESTIMATE_MIN_LEADS,
    BatchOutcome,
    MatchContext,
    Resolved,
    leads_decide_frame,
    leads_load,
    leads_resolve,
    match_model_current,
    outcome_write,
    resolved_subset,
)
from identity.runs import (
    LINK_TABLES,
    DatabaseUnavailable,
    RunHandle,
    connection_lost,
    job_run,
    progress_bar,
    reconnecting,
    safe_error,
    tables_analyze,
)
from recovery.jobs import WorkerSpec, recover_worker_main
from recovery.models import RECOVERY_TABLES, WorkStatus
from recovery.queue import (
    Shard,
    lead_links,
    queue_ahead,
    queue_claim,
    queue_mark,
    queue_peek,
    queue_pending_count,
)
from recovery.tracking import attempts_record

# With the index in memory, the leads of this many batches are decided in one frame (DecidedAhead).
AHEAD_BATCHES = 10
# Leads per batch transaction (SPEC §4: 500 to 1,000). 1,000: a batch's statements cost about as much
# for 1,000 leads as for 500 (1M park, 74,564 backlog leads, one worker: 38.3 s in batches of 500, 34.1 s
# in batches of 1,000).
BATCH = 1000

JOB = "recover_kpi_red_leads"
# Test hook: seconds to sleep at the end of each batch transaction (rows claimed, links written,
# not committed), so tests can overlap workers and SIGKILL a process mid-batch. Unset in production.
TEST_SLEEP_ENV = "CT4_TEST_SLEEP_IN_BATCH"
DEADLOCK_SQLSTATE = "40P01"
MAX_DEADLOCK_RETRIES = 3

logger = logging.getLogger("ct4.jobs")


@dataclass
class RecoverResult:
    processed: int = 0
    matched: int = 0
    failed: int = 0
    by_reason: dict = field(default_factory=dict)
    # matched = linked_now (links written by this run) + already_linked (links made elsewhere)
    linked_now: int = 0
    already_linked: int = 0
    batches: int = 0
    workers: int = 1
    pending: int = 0
    seconds: float = 0.0
    run_id: int | None = None

    @classmethod
    def from_counts(cls, counts: dict, **extra) -> RecoverResult:
        reasons = {code: counts[code] for code in ReasonCode.values if counts.get(code)}
        return cls(
            processed=counts.get("processed", 0), matched=counts.get("matched", 0), failed=counts.get("failed", 0),
            by_reason=reasons, linked_now=counts.get("linked_now", 0),
            already_linked=counts.get("already_linked", 0), batches=counts.get("batches", 0), **extra,
        )

    def as_dict(self) -> dict:
        return asdict(self)


class Budget:
    """What this run may still take (`limit` shared by every worker; -1: no limit) and how many
    pending rows it still sees (counted once at the start, then followed batch by batch: a count
    per batch would cost more than the batch's own queue work).

    Backed by multiprocessing Values, so separate worker processes share them.
    """

    def __init__(self, remaining, pending):
        self.remaining = remaining
        self.pending = pending

    def take(self, want: int) -> int:
        with self.remaining.get_lock():
            if self.remaining.value < 0:
                return want
            granted = min(want, self.remaining.value)
            self.remaining.value -= granted
            return granted

    def give_back(self, unused: int) -> None:
        if unused <= 0:
            return
        with self.remaining.get_lock():
            if self.remaining.value >= 0:
                self.remaining.value += unused

    def processed(self, count: int) -> int:
        """Record `count` rows done; returns the pending rows left as this run sees them."""
        with self.pending.get_lock():
            self.pending.value = max(self.pending.value - count, 0)
            return self.pending.value


def queue_recover(
    *, limit: int | None = None, workers: int = 1, batch_size: int = BATCH, trigger: str = "command",
    run_id: int | None = None, progress: bool | None = None,
) -> RecoverResult:
    """Claim pending queue rows (high risk and newest first), match, link + origin, mark, track.

    Not a singleton: any number of runs, processes or machines drain one queue side by side.
    `limit` caps the leads this run takes across its `workers` processes. The run is recorded
    once (workers log their batches under it and report their counts to it).
    """
    if workers < 1 or batch_size < 1 or (limit is not None and limit < 0):
        raise ValueError("workers and batch_size must be >= 1, limit >= 0")
    started = time.monotonic()
    params = {"limit": limit, "workers": workers, "batch_size": batch_size}
    with job_run(JOB, params=params, trigger=trigger, singleton=False, run_id=run_id) as run:
        # Every statement of a run goes through reconnecting: a cut aimed at the run's start can land
        # on the next one (CI, test_db_restart), and a plain statement there ended the job unrecorded.
        pending = reconnecting(queue_pending_count, handle=run)
        total = pending if limit is None else min(pending, limit)
        ctx = multiprocessing.get_context("spawn")
        budget = Budget(ctx.Value("q", -1 if limit is None else limit), ctx.Value("q", pending))
        with progress_bar(total, "recovering", progress) as bar:
            if workers == 1:
                worker_drain_in_process(
                    handle=run, budget=budget, batch_size=batch_size,
                    on_batch=lambda counts: bar.update(counts["processed"]),
                )
            else:
                _drain_in_processes(run=run, workers=workers, budget=budget, batch_size=batch_size, bar=bar)
        result = RecoverResult.from_counts(
            run.counts, workers=workers, pending=reconnecting(queue_pending_count, handle=run), run_id=run.run.pk,
            seconds=round(time.monotonic() - started, 2),
        )
        run.counts["pending"] = result.pending
        # Inside the run: its job_run_succeeded receivers (the audit sample) plan on fresh statistics.
        tables_analyze(*LINK_TABLES, *RECOVERY_TABLES, changed=run.counts.get("processed", 0))
    return result


def worker_drain_in_process(
    *, handle: RunHandle, budget: Budget, batch_size: int, on_batch: Callable[[dict], None] | None = None,
    shard: Shard | None = None,
) -> dict:
    """Claim and recover batches until the budget or the unlocked pending rows run out.

    A batch that loses its connection rolled back whole and its rows are pending again:
    `reconnecting` waits for the database and claims afresh from the same position.
    With a `shard` (one of several workers of a run) it claims and decides ahead its own part of the
    queue first, then, that part drained, whatever pending rows are left (another worker's, not
    locked: SKIP LOCKED still keeps any two workers off the same lead).
    """
    leads = budget.pending.value if budget.remaining.value < 0 else min(budget.pending.value, budget.remaining.value)
    context = reconnecting(lambda: MatchContext.for_leads(leads), handle=handle)
    if context.index is not None and leads >= ESTIMATE_MIN_LEADS:
        # A big drain after the index changed estimates the match model first (docs/matching.md).
        context = reconnecting(lambda: match_model_current(context, run_id=handle.run.pk), handle=handle)
    ahead = DecidedAhead(context, shard=shard) if context.index is not None else None
    try:
        deadlocks = 0
        position = None
        while True:
            want = budget.take(batch_size)
            if not want:
                break
            try:
                claimed, next_position, counts = reconnecting(
                    lambda: _claim_and_recover(want=want, position=position, context=context, handle=handle,
                                               ahead=ahead, shard=shard),
                    handle=handle)
            except Exception as exc:
                budget.give_back(want)
                if _is_deadlock(exc) and deadlocks < MAX_DEADLOCK_RETRIES:
                    # Another job linked the same lead or person at the same time; the batch rolled
                    # back whole and its rows are pending again: claim them afresh.
                    deadlocks += 1
                    logger.warning("%s run=%s deadlock, batch rolled back and retried", JOB, handle.run.pk)
                    continue
                raise
            budget.give_back(want - len(claimed))
            if claimed:
                position = next_position
                deadlocks = 0
                counts["batches"] = 1
                handle.add(**counts)
                handle.log_batch(
                    handle.counts["batches"], processed=counts["processed"], matched=counts["matched"],
                    failed=counts["failed"], pending=budget.processed(counts["processed"]),
                )
                if on_batch:
                    on_batch(counts)
            if len(claimed) < want:
                if shard is None:
                    break
                # This worker's part is drained: on to what is left of the others', from the top.
                shard, position = None, None
                if ahead is not None:
                    ahead.shard_set(None)
    finally:
        if ahead is not None:
            ahead.close()
    return handle.counts


def _claim_and_recover(
    *, want: int, position: tuple | None, context: MatchContext, handle: RunHandle, ahead: DecidedAhead | None = None,
    shard: Shard | None = None,
) -> tuple[list[str], tuple | None, dict]:
    """One batch in one transaction: claim up to `want` pending rows after `position`, recover them.

    Returns the claimed leads, the position after them and the batch's counts. A matcher failure
    rolls the batch back and fails its leads with ERROR; a database error (a deadlock, a lost
    connection) is the caller's.
    """
    claimed: list[str] = []
    counts: dict = {}
    if ahead is not None:
        try:
            ahead.prepare(want=want, after=position)
        except Exception as exc:  # the batch decides its own leads, as without look-ahead (and fails them if it must)
            if isinstance(exc, DatabaseError) or connection_lost(exc):
                raise
            ahead.forget()
    try:
        with transaction.atomic():
            claim = queue_claim(limit=want, after=position, shard=shard)
            claimed, position = claim.source_pks, claim.position
            if claimed:
                counts = _recover_batch(claimed, context, ahead=ahead)
                _test_sleep()
    except Exception as exc:  # a matcher failure fails its leads, not the run
        if isinstance(exc, DatabaseError) or connection_lost(exc):
            raise
        counts = _fail_batch(claimed, exc, handle)
    return claimed, position, counts


class DecidedAhead:
    """Decisions made ahead for the next leads in claim order, AHEAD_BATCHES batches at a time with
    the index in memory, before the claim and outside its transaction: the scorer's cost per frame
    operation is paid once per ten batches, not per batch, and no row lock is held while it runs.
    Each batch still claims, writes and commits its own leads (SPEC §4); a lead decided ahead
    and linked meanwhile is left out at its claim, and a claimed lead without a decision (another
    worker took the ones decided) is decided with its batch, as without look-ahead.

    While the batches of one window are claimed and written, the next window is decided on a second
    thread (its own connection, reads only): PostgreSQL works on the writes while the scorer works
    on the next leads, as match_leads overlaps its writes with its scoring."""

    def __init__(self, context: MatchContext, *, shard: Shard | None = None):
        self.context = context
        self.shard = shard  # the part of the queue the worker claims (Shard), None: all of it
        self.resolved: Resolved | None = None
        self.decided: set[str] = set()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decide-ahead")
        self._next: Future | None = None

    def _window(self, limit: int, after: tuple | None) -> tuple[set[str], Resolved | None, tuple | None]:
        """The next `limit` pending leads after `after` decided (with their evidence), and the position
        after them."""
        window = queue_ahead(limit=limit, after=after, shard=self.shard)
        leads = leads_load(window.source_pks)
        if not leads.height:
            return set(), None, window.position
        resolved = leads_decide_frame(leads, self.context).with_evidence(self.context.thresholds)
        return set(leads["source_pk"].to_list()), resolved, window.position

    def _window_in_background(self, limit: int, after: tuple | None) -> tuple[set[str], Resolved | None, tuple | None]:
        """_window on the background thread. A database error closes the thread's connection (the next
        window opens a fresh one) and reaches the caller through the future."""
        try:
            return self._window(limit, after)
        except Exception:
            connection.close()
            raise

    def prepare(self, *, want: int, after: tuple | None) -> None:
        """Decide the next AHEAD_BATCHES batches' leads when the next claim's are not decided yet."""
        upcoming = set(queue_peek(limit=want, after=after, shard=self.shard))
        if upcoming <= self.decided:
            return
        window = None
        if self._next is not None:
            future, self._next = self._next, None
            window = future.result()
        if window is None or not upcoming <= window[0]:
            window = self._window(want * AHEAD_BATCHES, after)
        self.decided, self.resolved, end = window
        self._start_next(want, end)

    def _start_next(self, want: int, end: tuple | None) -> None:
        if self._pool is not None and end is not None:
            self._next = self._pool.submit(self._window_in_background, want * AHEAD_BATCHES, end)

    def shard_set(self, shard: Shard | None) -> None:
        """Claims go to another part of the queue from now on: what was decided ahead is for the old one."""
        self.shard = shard
        self.forget()

    def forget(self) -> None:
        self.resolved, self.decided = None, set()
        self._drop_next()

    def _drop_next(self) -> None:
        if self._next is not None:
            future, self._next = self._next, None
            future.cancel() or future.exception()  # wait for a window in flight; its error is moot

    def close(self) -> None:
        """Stop the background thread and close its connection."""
        self._drop_next()
        if self._pool is not None:
            self._pool.submit(connections.close_all).result()
            self._pool.shutdown()
            self._pool = None

    def outcome(self, source_pks: list[str]) -> BatchOutcome | None:
        """The claimed leads' decisions (not written), or None when some were not decided ahead."""
        if self.resolved is None or not set(source_pks) <= self.decided:
            return None
        return resolved_subset(self.resolved, source_pks)


def _recover_batch(source_pks: list[str], context: MatchContext, *, ahead: DecidedAhead | None = None) -> dict:
    """One claimed batch, inside its transaction: resolve, mark the queue rows, record attempts."""
    # Leads linked since they were seeded (a reviewer, another job) are matched as they are;
    # running the matcher on them would only write a stale unmatched row.
    linked_before = lead_links(source_pks)
    todo = [pk for pk in source_pks if pk not in linked_before]
    if not todo:
        outcome = BatchOutcome()
    elif ahead is not None and (decided := ahead.outcome(todo)) is not None:
        outcome = outcome_write(decided, context)
    else:
        outcome = leads_resolve(source_pks=todo, context=context)
    # A lead with no decision (its row is gone from the leads table) or decided "link" but
    # without a link after the write has failed in a way the matcher did not explain.
    reasons = {pk: ReasonCode.ERROR.value for pk in source_pks}
    reasons.update({pk: o for pk, o in outcome.outcomes.items() if o != "link"})
    marked = queue_mark(reasons=reasons)
    linked = {row.source_pk: row.person_key for row in marked if row.status == WorkStatus.MATCHED}
    attempts_record(outcomes=outcome.outcomes, linked=linked)
    counts = Counter(row.fail_reason for row in marked if row.status == WorkStatus.FAILED)
    linked_now = len(set(outcome.linked) & set(linked))
    return {
        "processed": len(marked), "matched": len(linked), "failed": len(marked) - len(linked),
        "linked_now": linked_now, "already_linked": len(linked) - linked_now, **counts,
    }


def _fail_batch(source_pks: list[str], exc: Exception, handle: RunHandle) -> dict:
    """The batch rolled back on an unexpected error: record its leads as failed with ERROR."""
    # The exception text may quote a lead's data: only its type goes to the log.
    logger.error("%s run=%s batch of %s leads failed with %s; marked ERROR", JOB, handle.run.pk,
                 len(source_pks), type(exc).__name__)
    with transaction.atomic():
        held = queue_claim(limit=len(source_pks), source_pks=source_pks).source_pks
        marked = queue_mark(reasons={pk: ReasonCode.ERROR.value for pk in held})
        linked = {row.source_pk: row.person_key for row in marked if row.status == WorkStatus.MATCHED}
        attempts_record(outcomes={pk: ReasonCode.ERROR.value for pk in held}, linked=linked)
    failed = len(marked) - len(linked)
    return {"processed": len(marked), "matched": len(linked), "failed": failed, "already_linked": len(linked),
            ReasonCode.ERROR.value: failed}


def _is_deadlock(exc: BaseException) -> bool:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == DEADLOCK_SQLSTATE


def _test_sleep() -> None:
    seconds = float(os.environ.get(TEST_SLEEP_ENV) or 0)
    if seconds > 0:
        time.sleep(seconds)


# --- several worker processes ----------------------------------------------------------


@dataclass
class _WorkerHandle(RunHandle):
    """A worker's view of the parent's run: its batches log under the parent's run id, and the
    parent (not the worker) writes the run's counts, so they add up exactly once."""

    worker_no: int = 0

    def save_progress(self) -> None:
        pass

    def locks_take(self) -> bool:
        return True  # the parent's session holds the run's lock

    def log_batch(self, batch_no: int, **figures: int) -> None:
        super().log_batch(batch_no, worker=self.worker_no, **figures)


def worker_drain(*, spec: WorkerSpec, worker_no: int, remaining, pending, messages) -> None:
    """Body of a worker process (after recover_worker_main set Django up): drain, report to the parent."""
    try:
        handle = _WorkerHandle(run=JobRun.objects.get(pk=spec.run_id), worker_no=worker_no)
        worker_drain_in_process(
            handle=handle, budget=Budget(remaining, pending), batch_size=spec.batch_size,
            on_batch=lambda counts: messages.put(("batch", worker_no, counts)),
            shard=(worker_no - 1, spec.workers) if spec.workers > 1 else None,
        )
    except BaseException as exc:  # noqa: BLE001 - whatever ends a worker, its parent hears why; exit 1
        messages.put(("error", worker_no, safe_error(exc)))
        raise SystemExit(1) from None
    else:
        messages.put(("done", worker_no, None))
    finally:
        connection.close()


def _drain_in_processes(*, run: RunHandle, workers: int, budget: Budget, batch_size: int, bar) -> None:
    """Start `workers` processes (spawn), fold their per-batch counts into the run, wait for all."""
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    spec = WorkerSpec(
        run_id=run.run.pk, batch_size=batch_size,
        settings_module=os.environ.get("DJANGO_SETTINGS_MODULE") or settings.SETTINGS_MODULE,
        database={key: connection.settings_dict[key] for key in ("NAME", "USER", "PASSWORD", "HOST", "PORT")},
        workers=workers,
    )
    procs = {
        n: ctx.Process(target=recover_worker_main, args=(spec, n, budget.remaining, budget.pending, messages),
                       name=f"{JOB}-worker-{n}")
        for n in range(1, workers + 1)
    }
    for proc in procs.values():
        proc.start()
    ended: dict[int, str | None] = {}

    def handle(message) -> None:
        kind, worker_no, payload = message
        if kind == "batch":
            run.add(**payload)
            run.save_progress()
            bar.update(payload["processed"])
        else:
            ended[worker_no] = payload  # None when done, the error text when failed

    try:
        while len(ended) < workers:
            try:
                handle(messages.get(timeout=0.5))
                continue
            except stdlib_queue.Empty:
                pass
            dead = [n for n, proc in procs.items() if n not in ended and not proc.is_alive()]
            # A worker flushes its messages before it exits: read what is left before judging it.
            while True:
                try:
                    handle(messages.get(timeout=0.1))
                except stdlib_queue.Empty:
                    break
            for n in dead:
                if n not in ended:
                    ended[n] = f"worker exited with code {procs[n].exitcode}"
    finally:
        for proc in procs.values():
            if proc.is_alive() and len(ended) < workers:
                proc.terminate()
            proc.join()
    failures = {n: error for n, error in ended.items() if error}
    if failures:
        lost = any(error.startswith(DatabaseUnavailable.__name__) for error in failures.values())
        raise (DatabaseUnavailable if lost else RuntimeError)(
            f"{len(failures)} of {workers} recovery workers failed: "
            + "; ".join(f"worker {n}: {error}" for n, error in sorted(failures.items())))
