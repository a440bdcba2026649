"""reconcile_cabinet_leads_pipeline: move recent and limbo leads along the funnel.

Leads without identity are matched (tried ones wait for their backoff unless the drivers index
changed); a NO_DRIVER lead moves on when its person gains a driver (an index refresh does that,
with --refresh-index); reached milestones without a claim get their expected claims.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from django.db import connection, transaction

from identity.domain import TODAY
from identity.index import drivers_index_refresh
from identity.models import ReasonCode
from identity.resolution import MatchContext
from identity.runs import LINK_TABLES, JobLocked, job_run, progress_bar, reconnecting, tables_analyze
from recovery.claims import claims_create_expected
from recovery.jobs.retry import failure_counts, leads_resolve_tracked
from recovery.models import RECOVERY_TABLES
from recovery.queue import DEFAULT_BATCH
from recovery.sql_views import LimboStage
from recovery.tracking import leads_not_due

JOB = "reconcile_cabinet_leads_pipeline"
DEFAULT_LIMBO_STAGES = (LimboStage.NO_IDENTITY.value, LimboStage.NO_DRIVER.value, LimboStage.TRIPS_NO_CLAIM.value)

logger = logging.getLogger("ct4.jobs")

# Recent leads (any stage) and limbo leads in the chosen stages, newest first.
_SELECT_SQL = f"""
SELECT lb.lead_source_pk, lb.limbo_stage
FROM ops.v_cabinet_leads_limbo lb
WHERE (%(recent)s AND lb.lead_date >= {TODAY} - %(recent_days)s::int)
   OR (%(limbo)s AND lb.limbo_stage = ANY(%(stages)s::text[]))
ORDER BY lb.lead_date DESC, lb.lead_id DESC
"""


@dataclass
class ReconcileResult:
    processed: int = 0
    skipped_not_due: int = 0
    newly_linked: int = 0
    newly_driver_mapped: int = 0
    still_no_candidates: int = 0
    weak_match_only: int = 0
    conflicts: int = 0
    missing_identifiers: int = 0
    errors: int = 0
    claims_created: int = 0
    index_refreshed: bool = False
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def pipeline_reconcile(
    *, recent_days: int = 30, process_recent: bool = True, process_limbo: bool = True,
    limbo_stages: list[str] | None = None, refresh_index: bool = False, batch_size: int = DEFAULT_BATCH,
    trigger: str = "command", run_id: int | None = None, progress: bool | None = None,
) -> ReconcileResult:
    """Process recent and limbo leads in batches: link, see drivers mapped, create expected claims."""
    stages = list(limbo_stages or DEFAULT_LIMBO_STAGES)
    if unknown := set(stages) - set(LimboStage.values):
        raise ValueError(f"unknown limbo stages: {sorted(unknown)}")
    started = time.monotonic()
    result = ReconcileResult()
    params = {"recent_days": recent_days, "recent": process_recent, "limbo": process_limbo,
              "limbo_stages": stages, "refresh_index": refresh_index, "batch_size": batch_size}
    with job_run(JOB, params=params, trigger=trigger, run_id=run_id) as run:
        # Stages are read before the index refresh: a NO_DRIVER lead it maps counts as moved on.
        def select() -> list[tuple]:
            with connection.cursor() as cursor:
                cursor.execute(_SELECT_SQL, {"recent": process_recent, "recent_days": recent_days,
                                             "limbo": process_limbo, "stages": stages})
                return cursor.fetchall()

        # Each read goes through reconnecting, as the batches do: a connection lost between them
        # waits for the database instead of ending the run.
        rows = reconnecting(select, handle=run)
        if refresh_index:
            result.index_refreshed = _index_refresh(trigger)
        not_due = reconnecting(lambda: leads_not_due(
            source_pks=[pk for pk, stage in rows if stage == LimboStage.NO_IDENTITY]), handle=run)
        todo = [(pk, stage) for pk, stage in rows if pk not in not_due]
        result.skipped_not_due = len(rows) - len(todo)
        context = (reconnecting(lambda: MatchContext.for_leads(len(todo)), handle=run)
                   if any(s == LimboStage.NO_IDENTITY for _, s in todo) else None)
        with progress_bar(len(todo), "reconciling", progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                counts = reconnecting(lambda: _reconcile_batch(batch, context), handle=run)
                result.batches += 1
                for key, value in counts.items():
                    setattr(result, key, getattr(result, key) + value)
                run.add(**counts)
                run.log_batch(result.batches, processed=counts["processed"], matched=counts["newly_linked"],
                              failed=counts["still_no_candidates"] + counts["weak_match_only"] + counts["conflicts"]
                              + counts["missing_identifiers"] + counts["errors"],
                              pending=len(todo) - start - len(batch))
                bar.update(len(batch))
        run.counts.update(skipped_not_due=result.skipped_not_due, batches=result.batches,
                          index_refreshed=int(result.index_refreshed))
        result.seconds = round(time.monotonic() - started, 2)
        # Inside the run: its job_run_succeeded receivers (the audit sample) plan on fresh statistics.
        tables_analyze(*LINK_TABLES, *RECOVERY_TABLES, changed=run.counts.get("processed", 0))
    return result


def _reconcile_batch(batch: list[tuple[str, str]], context: MatchContext | None) -> dict:
    """One transaction: match the leads without identity, fill missing claims, see who moved on."""
    no_identity = [pk for pk, stage in batch if stage == LimboStage.NO_IDENTITY]
    no_driver = [pk for pk, stage in batch if stage == LimboStage.NO_DRIVER]
    with transaction.atomic():
        outcome, linked = leads_resolve_tracked(source_pks=no_identity, context=context)
        failed = failure_counts(outcome, linked)
        # Every lead of the batch: a claim is only inserted for a milestone reached in the
        # window that has no row, so leads with nothing to claim cost one probe each.
        claims = claims_create_expected(source_pks=[pk for pk, _ in batch])
        mapped = _moved_past_no_driver(no_driver)
    return {
        "processed": len(batch),
        "newly_linked": len(outcome.linked),
        "newly_driver_mapped": mapped,
        "still_no_candidates": failed[ReasonCode.NO_CANDIDATES],
        "weak_match_only": failed[ReasonCode.WEAK_MATCH_ONLY],
        "conflicts": failed[ReasonCode.CONFLICT_MULTIPLE_CANDIDATES],
        "missing_identifiers": failed[ReasonCode.MISSING_IDENTIFIERS],
        "errors": failed[ReasonCode.ERROR],
        "claims_created": claims,
    }


def _moved_past_no_driver(source_pks: list[str]) -> int:
    """How many of these NO_DRIVER leads now have a driver (their stage moved on)."""
    if not source_pks:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM ops.v_cabinet_leads_limbo WHERE lead_source_pk = ANY(%s) AND limbo_stage <> %s",
            [source_pks, LimboStage.NO_DRIVER],
        )
        return cursor.fetchone()[0]


def _index_refresh(trigger: str) -> bool:
    """Refresh the drivers index first (it is what maps new drivers to persons); if another
    refresh is running, go on with the index as it is."""
    try:
        drivers_index_refresh(trigger=trigger)
    except JobLocked:
        logger.warning("%s: drivers index refresh already running; reconciling against the current index", JOB)
        return False
    return True
