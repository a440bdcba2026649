"""backfill_identity_origins_for_links: persons with lead links whose origin is missing or not the earliest lead.

The origin itself is written by identity.linking.origins_refresh (the one writer of origins);
this job finds the persons that need it and refreshes them in batches.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from django.db import connection, transaction

from identity import linking
from identity.domain import EARLIEST_LEAD_SQL
from identity.runs import LINK_TABLES, job_run, progress_bar, reconnecting, tables_analyze
from recovery.models import RECOVERY_TABLES
from recovery.queue import DEFAULT_BATCH

JOB = "backfill_identity_origins_for_links"

# Each person's earliest linked lead (identity.domain.EARLIEST_LEAD_SQL) against its origin:
# missing, or naming another lead.
_PERSONS_SQL = f"""
WITH first_lead AS ({EARLIEST_LEAD_SQL}
)
SELECT f.person_key::text, o.person_key IS NULL AS missing
FROM first_lead f
LEFT JOIN canon.identity_origin o ON o.person_key = f.person_key
WHERE o.origin_source_id IS DISTINCT FROM f.source_pk
ORDER BY f.person_key
"""


@dataclass
class BackfillResult:
    persons: int = 0
    missing_origin: int = 0
    not_earliest: int = 0
    origins_written: int = 0
    dry_run: bool = False
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def origins_refresh_locked(*, person_keys: list[str]) -> int:
    """origins_refresh for these persons, after locking them (in key order) as leads_link does,
    so a link committed meanwhile by a recovery worker cannot leave a stale origin behind."""
    if not person_keys:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM canon.identity_registry WHERE person_key = ANY(%s::uuid[]) ORDER BY person_key FOR UPDATE",
            [sorted(person_keys)],
        )
        return linking.origins_refresh(cursor=cursor, person_keys=sorted(person_keys))


def _backfill_batch(person_keys: list[str], *, dry_run: bool) -> int:
    """One batch in one transaction (rolled back on a dry run): the origins written."""
    with transaction.atomic():
        written = origins_refresh_locked(person_keys=person_keys)
        if dry_run:
            transaction.set_rollback(True)
    return written


def persons_needing_origin() -> list[tuple[str, bool]]:
    """(person_key, origin missing?) of every person whose origin is not its earliest linked lead."""
    with connection.cursor() as cursor:
        cursor.execute(_PERSONS_SQL)
        return cursor.fetchall()


def origins_backfill(
    *, dry_run: bool = False, batch_size: int = DEFAULT_BATCH, trigger: str = "command", run_id: int | None = None,
    progress: bool | None = None,
) -> BackfillResult:
    """Write the origins missing (or not the earliest lead) for persons with lead links, in batches.

    A singleton job. With dry_run every batch is rolled back: the counts say what would be written.
    """
    started = time.monotonic()
    result = BackfillResult(dry_run=dry_run)
    with job_run(JOB, params={"dry_run": dry_run, "batch_size": batch_size}, trigger=trigger, run_id=run_id) as run:
        persons = persons_needing_origin()
        result.persons = len(persons)
        result.missing_origin = sum(1 for _, missing in persons if missing)
        result.not_earliest = result.persons - result.missing_origin
        with progress_bar(len(persons), "origins", progress) as bar:
            for start in range(0, len(persons), batch_size):
                batch = [person_key for person_key, _ in persons[start:start + batch_size]]
                written = reconnecting(lambda: _backfill_batch(batch, dry_run=dry_run), handle=run)
                result.batches += 1
                result.origins_written += written
                run.add(processed=len(batch), origins_written=written)
                run.log_batch(result.batches, processed=len(batch), origins_written=written,
                              pending=len(persons) - start - len(batch))
                bar.update(len(batch))
        run.counts.update(persons=result.persons, missing_origin=result.missing_origin,
                          not_earliest=result.not_earliest, batches=result.batches)
        result.seconds = round(time.monotonic() - started, 2)
        # Inside the run: its job_run_succeeded receivers (the audit sample) plan on fresh statistics.
        tables_analyze(*LINK_TABLES, *RECOVERY_TABLES, changed=run.counts.get("processed", 0))
    return result
