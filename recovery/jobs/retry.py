"""retry_identity_matching: work through the unresolved leads of ops.v_identity_gap_analysis.

no_identity leads are matched again (those that failed since the drivers index last changed wait
for their backoff); no_origin / inconsistent_origin leads get their person's origin refreshed.
Every lead tried is tracked in ops.identity_matching_jobs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from django.db import connection, transaction

from identity.domain import RiskLevel
from identity.models import ReasonCode
from identity.resolution import BatchOutcome, MatchContext, leads_resolve
from identity.runs import LINK_TABLES, job_run, progress_bar, reconnecting, tables_analyze
from recovery.jobs.backfill import origins_refresh_locked
from recovery.models import RECOVERY_TABLES
from recovery.queue import DEFAULT_BATCH, lead_links, queue_mark_linked
from recovery.sql_views import GapReason
from recovery.tracking import attempts_record, leads_not_due

JOB = "retry_identity_matching"
ORIGIN_GAPS = (GapReason.NO_ORIGIN.value, GapReason.INCONSISTENT_ORIGIN.value)

# Unresolved leads, high risk first, then newest.
_UNRESOLVED_SQL = f"""
SELECT g.lead_source_pk, g.gap_reason, g.person_key::text
FROM ops.v_identity_gap_analysis g
WHERE g.gap_reason <> '{GapReason.RESOLVED}'
  AND (%(risk_level)s::text IS NULL OR g.risk_level = %(risk_level)s::text)
  AND (%(gap_reason)s::text IS NULL OR g.gap_reason = %(gap_reason)s::text)
ORDER BY CASE g.risk_level WHEN '{RiskLevel.HIGH}' THEN 0 WHEN '{RiskLevel.MEDIUM}' THEN 1 ELSE 2 END,
         g.lead_date DESC, g.lead_id DESC
"""


@dataclass
class RetryResult:
    selected: int = 0
    skipped_not_due: int = 0
    processed: int = 0
    newly_linked: int = 0
    matched: int = 0
    origins_written: int = 0
    failed: int = 0
    by_reason: dict = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def leads_resolve_tracked(*, source_pks: list[str], context: MatchContext) -> tuple[BatchOutcome, dict[str, str]]:
    """Resolve leads inside the caller's batch transaction, track every attempt, and mark their
    queue rows matched when linked. Returns the outcome and {source_pk: person_key} of the linked."""
    # Leads linked since they were selected (a reviewer, a recovery worker) are not re-decided.
    linked_before = lead_links(source_pks)
    todo = [pk for pk in source_pks if pk not in linked_before]
    outcome = leads_resolve(source_pks=todo, context=context) if todo else BatchOutcome()
    linked = lead_links(source_pks)
    attempts_record(outcomes=outcome.outcomes, linked=linked)
    queue_mark_linked(source_pks=sorted(linked))
    return outcome, linked


def failure_counts(outcome: BatchOutcome, linked: dict[str, str]) -> Counter:
    return Counter(str(o) for pk, o in outcome.outcomes.items() if pk not in linked and o != "link")


def _retry_batch(batch: list[tuple], context: MatchContext | None) -> tuple[BatchOutcome, dict[str, str], int]:
    """One transaction: match the no_identity leads, refresh the origins of the others' persons."""
    no_identity = [pk for pk, gap, _ in batch if gap == GapReason.NO_IDENTITY]
    origin_leads = [pk for pk, gap, _ in batch if gap in ORIGIN_GAPS]
    with transaction.atomic():
        outcome, linked = leads_resolve_tracked(source_pks=no_identity, context=context)
        written = origins_refresh_locked(person_keys=sorted({p for _, gap, p in batch if gap in ORIGIN_GAPS}))
        # Leads whose origin was fixed are resolved with their link's person.
        attempts_record(outcomes={}, linked=lead_links(origin_leads))
    return outcome, linked, written


def identity_matching_retry(
    *, limit: int | None = None, risk_level: str | None = None, gap_reason: str | None = None,
    batch_size: int = DEFAULT_BATCH, trigger: str = "command", run_id: int | None = None,
    progress: bool | None = None,
) -> RetryResult:
    """Create the missing links and origins of unresolved leads, in batches (a singleton job)."""
    if risk_level is not None and risk_level not in RiskLevel.values:
        raise ValueError(f"risk_level must be one of {RiskLevel.values}")
    if gap_reason is not None and gap_reason not in set(GapReason.values) - {GapReason.RESOLVED}:
        raise ValueError("gap_reason must be no_identity, no_origin or inconsistent_origin")
    started = time.monotonic()
    result = RetryResult()
    params = {"limit": limit, "risk_level": risk_level, "gap_reason": gap_reason, "batch_size": batch_size}
    with job_run(JOB, params=params, trigger=trigger, run_id=run_id) as run:
        def select() -> list[tuple]:
            with connection.cursor() as cursor:
                cursor.execute(_UNRESOLVED_SQL, {"risk_level": risk_level, "gap_reason": gap_reason})
                return cursor.fetchall()

        # Each read goes through reconnecting, as the batches do: a connection lost between them
        # waits for the database instead of ending the run.
        rows = reconnecting(select, handle=run)
        not_due = reconnecting(lambda: leads_not_due(
            source_pks=[pk for pk, gap, _ in rows if gap == GapReason.NO_IDENTITY]), handle=run)
        todo = [row for row in rows if row[0] not in not_due]
        result.skipped_not_due = len(rows) - len(todo)
        todo = todo[:limit] if limit is not None else todo
        result.selected = len(todo)
        context = (reconnecting(lambda: MatchContext.for_leads(len(todo)), handle=run)
                   if any(gap == GapReason.NO_IDENTITY for _, gap, _ in todo) else None)
        reasons: Counter = Counter()
        with progress_bar(len(todo), "retrying", progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                origin_leads = [pk for pk, gap, _ in batch if gap in ORIGIN_GAPS]
                outcome, linked, written = reconnecting(lambda: _retry_batch(batch, context), handle=run)
                failed = failure_counts(outcome, linked)
                result.batches += 1
                result.processed += len(batch)
                result.newly_linked += len(outcome.linked)
                result.matched += len(linked) + len(origin_leads)
                result.origins_written += written
                result.failed += sum(failed.values())
                reasons.update(failed)
                run.add(processed=len(batch), newly_linked=len(outcome.linked), matched=len(linked) + len(origin_leads),
                        origins_written=written, failed=sum(failed.values()), **failed)
                run.log_batch(result.batches, processed=len(batch), matched=len(linked) + len(origin_leads),
                              failed=sum(failed.values()), pending=len(todo) - start - len(batch))
                bar.update(len(batch))
        result.by_reason = {code: reasons[code] for code in ReasonCode.values if reasons.get(code)}
        run.counts.update(selected=result.selected, skipped_not_due=result.skipped_not_due, batches=result.batches)
        result.seconds = round(time.monotonic() - started, 2)
        # Inside the run: its job_run_succeeded receivers (the audit sample) plan on fresh statistics.
        tables_analyze(*LINK_TABLES, *RECOVERY_TABLES, changed=run.counts.get("processed", 0))
    return result
