"""The one writer of ops.identity_matching_jobs: one row per lead any matching job has tried.

Every job that resolves leads records its attempts here (so "matched in the last 24 h" counts
them all), and the retry and reconcile jobs read it to skip leads not due for another try.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.db import connection

from identity.index import index_changed_at
from identity.models import LEADS_TABLE
from recovery.models import WorkStatus

# Backoff after a failed attempt: 1 h * 4^(attempts - 1), at most 72 h (4^4 h is already past
# the cap, so the exponent is capped too and power() never overflows).
MAX_BACKOFF_HOURS = 72


def backoff_sql(attempts: str) -> str:
    """SQL for the wait after the `attempts`-th failed attempt (an expression over a column)."""
    return (
        f"LEAST(interval '1 hour' * power(4, LEAST(GREATEST({attempts}, 1) - 1, 4)),"
        f" interval '{MAX_BACKOFF_HOURS} hours')"
    )


def attempts_record(*, outcomes: Mapping[str, str], linked: Mapping[str, str]) -> int:
    """Upsert one row per lead tried: attempt_count + 1, the outcome and when.

    `outcomes` maps each lead decided to "link" or its reason code. `linked` maps each lead that
    has a link after the attempt (made now or earlier, by anyone) to its person: those are
    matched. The other leads failed with their reason; a lead decided "link" but not linked (a
    dry run) stays pending. Returns rows written.
    """
    rows = []
    for source_pk in sorted(set(outcomes) | set(linked)):
        if source_pk in linked:
            rows.append((source_pk, WorkStatus.MATCHED.value, None, str(linked[source_pk])))
        elif outcomes[source_pk] == "link":
            rows.append((source_pk, WorkStatus.PENDING.value, None, None))
        else:
            rows.append((source_pk, WorkStatus.FAILED.value, str(outcomes[source_pk]), None))
    if not rows:
        return 0
    pks, statuses, reasons, persons = (list(column) for column in zip(*rows))
    with connection.cursor() as cursor:
        # In source_pk order, so two jobs upserting overlapping leads lock rows in the same order.
        cursor.execute(
            """
            INSERT INTO ops.identity_matching_jobs AS j
                (source_table, source_id, status, attempt_count, last_attempt_at, fail_reason,
                 matched_person_key, created_at, updated_at)
            SELECT %s, r.source_pk, r.status, 1, now(), r.reason, r.person::uuid, now(), now()
            FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS r(source_pk, status, reason, person)
            ORDER BY r.source_pk
            ON CONFLICT (source_table, source_id) DO UPDATE SET
                status = EXCLUDED.status, attempt_count = j.attempt_count + 1,
                last_attempt_at = EXCLUDED.last_attempt_at, fail_reason = EXCLUDED.fail_reason,
                matched_person_key = EXCLUDED.matched_person_key, updated_at = now()
            """,
            [LEADS_TABLE, pks, statuses, reasons, persons],
        )
        return cursor.rowcount


def attempts_reopen(*, source_pks: list[str]) -> int:
    """The tracking rows of leads whose link a person undid: pending again, no person, no reason (the
    attempts made stay counted). Leads never tried have no row and get none. Returns rows changed."""
    if not source_pks:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE ops.identity_matching_jobs SET status = %s, matched_person_key = NULL, fail_reason = NULL,
                                                  updated_at = now()
            WHERE source_table = %s AND source_id = ANY(%s)
            """,
            [WorkStatus.PENDING, LEADS_TABLE, sorted(source_pks)],
        )
        return cursor.rowcount


def leads_not_due(*, source_pks: list[str]) -> set[str]:
    """The leads whose last attempt failed after the drivers index last changed and whose backoff
    has not passed: trying them again now would only decide the same."""
    if not source_pks:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT j.source_id FROM ops.identity_matching_jobs j
            WHERE j.source_table = %s AND j.source_id = ANY(%s) AND j.status = %s
              AND j.last_attempt_at >= COALESCE(%s::timestamptz, '-infinity'::timestamptz)
              AND j.last_attempt_at + {backoff_sql("j.attempt_count")} > now()
            """,
            [LEADS_TABLE, source_pks, WorkStatus.FAILED, index_changed_at()],
        )
        return {row[0] for row in cursor.fetchall()}
