"""The one writer of the red-KPI queue (ops.cabinet_kpi_red_recovery_queue): seed, claim, mark.

The queue's status is the source of truth for recovery: seed makes backlog leads pending (and
failed ones pending again when due), recover claims pending rows with FOR UPDATE SKIP LOCKED
and marks each matched or failed inside the same transaction that writes the links.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from django.db import connection, transaction

from identity import linking
from identity.index import index_changed_at
from identity.models import LEADS_TABLE
from identity.runs import job_run, progress_bar, reconnecting
from recovery.models import WorkStatus
from recovery.tracking import backoff_sql

SEED_JOB = "seed_kpi_red_queue"
DEFAULT_BATCH = 500
QUEUE = "ops.cabinet_kpi_red_recovery_queue"

# The next batch of backlog leads, in source_pk order (keyset pagination over the view).
_BACKLOG_BATCH_SQL = """
SELECT b.lead_source_pk, b.created_at
FROM ops.v_cabinet_kpi_red_backlog b
WHERE %(after)s::text IS NULL OR b.lead_source_pk > %(after)s::text
ORDER BY b.lead_source_pk
LIMIT %(size)s
"""

# Upsert one batch of backlog leads: new ones are inserted pending; failed ones whose backoff
# passed, or that were last tried before the drivers index changed, become pending again; the
# copy of the lead's created_at is kept current. Matched rows are left alone. The lateral
# lookups keep this to one index probe per lead (a join would hash the whole queue per batch).
_SEED_BATCH_SQL = f"""
WITH batch AS (
    SELECT e.* FROM unnest(%(pks)s::text[], %(created)s::timestamptz[]) AS e(lead_source_pk, created_at)
), known AS (
    SELECT b.lead_source_pk, b.created_at, q.id, q.status, q.lead_created_at,
           q.status = '{WorkStatus.FAILED}'
           AND (q.next_attempt_at <= now()
                OR q.last_attempt_at IS NULL
                OR q.last_attempt_at < %(index_changed_at)s::timestamptz) AS due
    FROM batch b
    LEFT JOIN LATERAL (
        SELECT id, status, lead_created_at, next_attempt_at, last_attempt_at
        FROM {QUEUE} q WHERE q.lead_source_pk = b.lead_source_pk LIMIT 1
    ) q ON true
), inserted AS (
    INSERT INTO {QUEUE} (lead_source_pk, status, attempts, lead_created_at, created_at, updated_at)
    SELECT k.lead_source_pk, '{WorkStatus.PENDING}', 0, k.created_at, now(), now()
    FROM known k
    WHERE k.id IS NULL
    ORDER BY k.lead_source_pk
    ON CONFLICT (lead_source_pk) DO NOTHING
    RETURNING 1
), updated AS (
    UPDATE {QUEUE} q SET
        status = CASE WHEN k.due THEN '{WorkStatus.PENDING}' ELSE q.status END,
        next_attempt_at = CASE WHEN k.due THEN NULL ELSE q.next_attempt_at END,
        lead_created_at = k.created_at,
        updated_at = now()
    FROM known k
    WHERE q.id = k.id AND q.lead_source_pk = ANY(%(pks)s::text[]) AND k.status <> '{WorkStatus.MATCHED}'
      AND (k.due OR k.lead_created_at IS DISTINCT FROM k.created_at)
    RETURNING k.due
)
SELECT (SELECT count(*) FROM inserted),
       (SELECT count(*) FROM updated WHERE due),
       (SELECT count(*) FROM known WHERE status = '{WorkStatus.FAILED}' AND NOT due)
"""

# The next batch of unmatched queue rows whose lead has a link made elsewhere (a reviewer, the
# retry or reconcile job): matched, with that link's person and time. Rows a recovery worker
# holds are skipped; that worker marks them itself.
_MATCHED_ELSEWHERE_SQL = f"""
WITH found AS (
    SELECT q.id, il.person_key, il.linked_at
    FROM {QUEUE} q
    JOIN canon.identity_links il ON il.source_table = %(leads)s AND il.source_pk = q.lead_source_pk
    WHERE q.status <> '{WorkStatus.MATCHED}' AND q.id > %(after)s
    ORDER BY q.id
    LIMIT %(size)s
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE {QUEUE} q SET
    status = '{WorkStatus.MATCHED}', matched_person_key = f.person_key, matched_at = f.linked_at,
    fail_reason = NULL, next_attempt_at = NULL, updated_at = now()
FROM found f
WHERE q.id = f.id
RETURNING q.id
"""


@dataclass
class SeedResult:
    backlog: int = 0
    inserted: int = 0
    reset_to_pending: int = 0
    newly_matched_elsewhere: int = 0
    unchanged: int = 0
    pending: int = 0
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def queue_seed(
    *, batch_size: int = DEFAULT_BATCH, trigger: str = "command", run_id: int | None = None,
    progress: bool | None = None,
) -> SeedResult:
    """Upsert every backlog lead into the queue as pending, batch by batch (a singleton job).

    Matched rows are left alone; a failed row becomes pending when its backoff passed or the
    drivers index changed after its last attempt; a row whose lead left the backlog through a
    link made elsewhere becomes matched with that link's person. A second run changes nothing.
    """
    started = time.monotonic()
    result = SeedResult()
    with job_run(SEED_JOB, params={"batch_size": batch_size}, trigger=trigger, run_id=run_id) as run:
        batch_no = 0
        after_id = 0
        while True:
            ids = reconnecting(lambda: _matched_elsewhere_batch(after_id, batch_size), handle=run)
            if not ids:
                break
            batch_no += 1
            after_id = max(ids)
            result.newly_matched_elsewhere += len(ids)
            run.add(newly_matched_elsewhere=len(ids))
            run.log_batch(batch_no, processed=len(ids), matched=len(ids), failed=0, pending=queue_pending_count())
            if len(ids) < batch_size:
                break

        changed_at = index_changed_at()
        # Counted once, then followed batch by batch: a count per batch would cost more than the batch.
        pending = queue_pending_count()
        after = None
        with progress_bar(backlog_count(), "seeding", progress) as bar:
            while True:
                rows, (inserted, reset, still_failed) = reconnecting(
                    lambda: _seed_batch(after, batch_size, changed_at), handle=run)
                if not rows:
                    break
                seen, after = len(rows), rows[-1][0]
                batch_no += 1
                unchanged = seen - inserted - reset
                pending += inserted + reset
                result.backlog += seen
                result.inserted += inserted
                result.reset_to_pending += reset
                result.unchanged += unchanged
                run.add(backlog=seen, inserted=inserted, reset_to_pending=reset, unchanged=unchanged)
                # matched: none here (backlog leads have no link); failed: rows still in backoff.
                run.log_batch(batch_no, processed=seen, matched=0, failed=still_failed, pending=pending,
                              inserted=inserted, reset_to_pending=reset, unchanged=unchanged)
                bar.update(seen)
                if seen < batch_size:
                    break
        if result.inserted or result.reset_to_pending or result.newly_matched_elsewhere:
            # The claim query picks its index by the pending-row estimate; after a big seed a
            # stale estimate (say, "none pending") would sort the whole queue on every claim.
            reconnecting(_queue_analyze, handle=run)
        result.batches = batch_no
        # Through reconnecting, as every statement of a run: a cut can land on whichever comes next.
        result.pending = reconnecting(queue_pending_count, handle=run)
        result.seconds = round(time.monotonic() - started, 2)
        run.add(batches=batch_no)
        run.counts["pending"] = result.pending
    return result


def _queue_analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {QUEUE}")


def _matched_elsewhere_batch(after_id: int, size: int) -> list[int]:
    """One transaction: queue rows whose lead was linked elsewhere become matched (their ids)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_MATCHED_ELSEWHERE_SQL, {"leads": LEADS_TABLE, "after": after_id, "size": size})
        return [row[0] for row in cursor.fetchall()]


def _seed_batch(after, size: int, changed_at) -> tuple[list, tuple[int, int, int]]:
    """One transaction: the next backlog leads after `after`, upserted; (rows, (inserted, reset, still failed))."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_BACKLOG_BATCH_SQL, {"after": after, "size": size})
        rows = cursor.fetchall()
        if not rows:
            return rows, (0, 0, 0)
        cursor.execute(_SEED_BATCH_SQL, {"pks": [r[0] for r in rows], "created": [r[1] for r in rows],
                                         "index_changed_at": changed_at})
        return rows, cursor.fetchone()


def backlog_count() -> int:
    """The red KPI now: leads in ops.v_cabinet_kpi_red_backlog (no identity link, no claim)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ops.v_cabinet_kpi_red_backlog")
        return cursor.fetchone()[0]


def backlog_by_risk() -> dict[str, int]:
    """The red KPI now by risk level (levels with no lead left out)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT risk_level, count(*) FROM ops.v_cabinet_kpi_red_backlog GROUP BY 1 ORDER BY 1")
        return dict(cursor.fetchall())


def queue_failed_by_reason() -> dict[str, int]:
    """Failed queue rows by fail reason, most frequent first (UNKNOWN for a row without one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT coalesce(fail_reason, 'UNKNOWN') AS reason, count(*) AS n
            FROM ops.cabinet_kpi_red_recovery_queue
            WHERE status = %s
            GROUP BY 1 ORDER BY n DESC, reason
            """,
            [WorkStatus.FAILED],
        )
        return dict(cursor.fetchall())


def queue_pending_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {QUEUE} WHERE status = %s", [WorkStatus.PENDING])
        return cursor.fetchone()[0]


@dataclass
class Claimed:
    source_pks: list[str]
    # Where the claim stopped in claim order (lead_created_at as PostgreSQL's text, lead_source_pk): the
    # next claim of the same worker starts after it.
    position: tuple | None


# (k, n): the k-th of n disjoint parts of the queue, by a hash of the lead (0 <= k < n). The workers of one
# run each claim (and decide ahead) their own part first, so none scores leads another will claim.
Shard = tuple[int, int]


def queue_claim(*, limit: int, source_pks: list[str] | None = None, after: tuple | None = None,
                shard: Shard | None = None) -> Claimed:
    """Lock up to `limit` pending rows no other worker holds, newest lead first.

    Must run inside the batch's transaction: the row locks are what keep other workers off
    these leads until the batch commits (or rolls back, and they are pending again).
    Newest first is high risk first: high risk means a lead date within the last 14 days.
    `source_pks` restricts the claim to those leads. `after` (the previous claim's position)
    makes each claim start where the last one stopped: rows done earlier in the run stay in
    the index until vacuum, and walking past them on every claim would make a run quadratic.
    `shard` restricts it to one part of the queue (Shard).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("queue_claim must run inside the batch transaction")
    return _pending(limit=limit, source_pks=source_pks, after=after, shard=shard, lock=True)


def queue_peek(*, limit: int, after: tuple | None = None, shard: Shard | None = None) -> list[str]:
    """The next `limit` pending leads in claim order after `after`, locked by someone or not, locking
    nothing: what the next claims will most likely take (recovery decides them ahead)."""
    return queue_ahead(limit=limit, after=after, shard=shard).source_pks


def queue_ahead(*, limit: int, after: tuple | None = None, shard: Shard | None = None) -> Claimed:
    """queue_peek with the position after the leads it returns (where the window after them starts)."""
    return _pending(limit=limit, after=after, shard=shard, lock=False)


def _pending(*, limit: int, source_pks: list[str] | None = None, after: tuple | None = None,
             shard: Shard | None = None, lock: bool) -> Claimed:
    conditions, params = ["q.status = %s"], [WorkStatus.PENDING]
    if shard is not None:
        part, parts = shard
        if not 0 <= part < parts:
            raise ValueError(f"shard {part} of {parts}: want 0 <= k < n")
        conditions.append("mod(hashtext(q.lead_source_pk) & 2147483647, %s) = %s")
        params += [parts, part]
    if source_pks is not None:
        conditions.append("q.lead_source_pk = ANY(%s)")
        params.append(source_pks)
    if after is not None:
        created, source_pk = after
        if created is None:  # rows without a lead date come first (DESC puts NULLs first)
            conditions.append("(q.lead_created_at IS NOT NULL OR q.lead_source_pk > %s)")
            params.append(source_pk)
        else:
            conditions.append("q.lead_created_at <= %s::timestamptz "
                              "AND (q.lead_created_at < %s::timestamptz OR q.lead_source_pk > %s)")
            params += [created, created, source_pk]
    with connection.cursor() as cursor:
        # The lead date as text: only the last row's is used (the position), and turning every row's
        # timestamptz into a datetime cost Python ~3 us a row (a 1M recovery reads ~230,000 rows
        # through claims, peeks and look-ahead windows). Exact: the text round-trips to the same instant.
        cursor.execute(
            f"""
            SELECT q.lead_source_pk, q.lead_created_at::text FROM {QUEUE} q
            WHERE {" AND ".join(conditions)}
            ORDER BY q.lead_created_at DESC, q.lead_source_pk
            LIMIT %s
            {"FOR UPDATE SKIP LOCKED" if lock else ""}
            """,
            [*params, limit],
        )
        rows = cursor.fetchall()
    return Claimed(source_pks=[row[0] for row in rows], position=(rows[-1][1], rows[-1][0]) if rows else after)


@dataclass(frozen=True)
class MarkedRow:
    source_pk: str
    status: str
    fail_reason: str | None
    person_key: str | None


def queue_mark(*, reasons: Mapping[str, str]) -> list[MarkedRow]:
    """Mark claimed rows after their attempt: matched when the lead has a link now (in this
    transaction, so never without it), else failed with its reason and the next backoff.

    `reasons` maps every claimed source_pk to the reason to record if it has no link.
    """
    # The redundant `= ANY(...)` filters here and below make the planner reach the queue and the
    # links through their unique indexes: a join alone, on stale statistics, hashes whole tables.
    if not reasons:
        return []
    pks = sorted(reasons)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {QUEUE} q SET
                status = CASE WHEN il.person_key IS NOT NULL THEN '{WorkStatus.MATCHED}'
                              ELSE '{WorkStatus.FAILED}' END,
                attempts = q.attempts + 1,
                fail_reason = CASE WHEN il.person_key IS NULL THEN r.reason END,
                matched_person_key = il.person_key,
                last_attempt_at = now(),
                next_attempt_at = CASE WHEN il.person_key IS NULL THEN now() + {backoff_sql("q.attempts + 1")} END,
                matched_at = il.linked_at,
                updated_at = now()
            FROM unnest(%s::text[], %s::text[]) AS r(source_pk, reason)
            LEFT JOIN canon.identity_links il
                   ON il.source_table = %s AND il.source_pk = r.source_pk AND il.source_pk = ANY(%s)
            WHERE q.lead_source_pk = r.source_pk AND q.lead_source_pk = ANY(%s)
            RETURNING q.lead_source_pk, q.status, q.fail_reason, q.matched_person_key::text
            """,
            [pks, [str(reasons[pk]) for pk in pks], LEADS_TABLE, pks, pks],
        )
        return [MarkedRow(*row) for row in cursor.fetchall()]


def queue_mark_linked(*, source_pks: list[str]) -> int:
    """Mark matched the unmatched queue rows of these leads that have a link now (other jobs
    link leads too). Rows a recovery worker holds are skipped: it marks them itself."""
    if not source_pks:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH found AS (
                SELECT q.id, il.person_key, il.linked_at
                FROM {QUEUE} q
                JOIN canon.identity_links il
                  ON il.source_table = %s AND il.source_pk = q.lead_source_pk AND il.source_pk = ANY(%s)
                WHERE q.lead_source_pk = ANY(%s) AND q.status <> %s
                ORDER BY q.id
                FOR UPDATE OF q SKIP LOCKED
            )
            UPDATE {QUEUE} q SET
                status = %s, matched_person_key = f.person_key, matched_at = f.linked_at,
                fail_reason = NULL, next_attempt_at = NULL, updated_at = now()
            FROM found f
            WHERE q.id = f.id
            """,
            [LEADS_TABLE, source_pks, source_pks, WorkStatus.MATCHED, WorkStatus.MATCHED],
        )
        return cursor.rowcount


def queue_reopen(*, source_pks: list[str]) -> int:
    """Put these leads back in the queue as pending (inserted when they have no row), their match
    forgotten: what a person's undo of a link does, so recovery tries them again. Leads that have a
    link now are left alone. Returns rows written."""
    if not source_pks:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {QUEUE} AS q (lead_source_pk, status, attempts, lead_created_at, created_at, updated_at)
            SELECT l.source_pk, %s, 0, l.created_at, now(), now()
            FROM public.module_ct_cabinet_leads l
            WHERE l.source_pk = ANY(%s)
              AND NOT EXISTS (SELECT 1 FROM canon.identity_links il
                              WHERE il.source_table = %s AND il.source_pk = l.source_pk)
            ORDER BY l.source_pk
            ON CONFLICT (lead_source_pk) DO UPDATE SET
                status = EXCLUDED.status, matched_person_key = NULL, matched_at = NULL, fail_reason = NULL,
                next_attempt_at = NULL, updated_at = now()
            """,
            [WorkStatus.PENDING, source_pks, LEADS_TABLE],
        )
        return cursor.rowcount


def lead_links(source_pks: list[str]) -> dict[str, str]:
    """The person each of these leads is linked to (leads without a link are left out)."""
    return linking.lead_links(source_pks=source_pks)


__all__ = [
    "Claimed",
    "SeedResult",
    "lead_links",
    "queue_claim",
    "queue_mark",
    "queue_mark_linked",
    "queue_pending_count",
    "queue_reopen",
    "queue_seed",
]
