"""Freshness and recovery status (SPEC §6), read by the API, the dashboard, the reports and /metrics.

Freshness of the matching jobs: OK (a run of one of them succeeded in the last 24 h), STALE
(they ran, but not successfully in 24 h), NEVER. Recovery status: ACTIVE (the recovery job
is scheduled and leads were matched in the last 48 h), NO_SIGNAL (scheduled, nothing matched
in 48 h), NOT_CONFIGURED (no schedule runs it).
"""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.utils import timezone

from identity.models import JobRun, JobRunStatus
from identity.runs import ABANDONED_RUNS, ABANDONED_SQL
from recovery.schedules import job_schedule

FRESH_HOURS = 24
SIGNAL_HOURS = 48
# The jobs that match leads; any of them succeeding keeps the identity data fresh.
MATCHING_JOBS = ("recover_kpi_red_leads", "retry_identity_matching", "reconcile_cabinet_leads_pipeline")
RECOVERY_JOB = "recover_kpi_red_leads"


class Freshness:
    OK = "OK"
    STALE = "STALE"
    NEVER = "NEVER"


class RecoveryStatus:
    ACTIVE = "ACTIVE"
    NO_SIGNAL = "NO_SIGNAL"
    NOT_CONFIGURED = "NOT_CONFIGURED"


def _run_summary(run: JobRun | None) -> dict | None:
    if run is None:
        return None
    return {"id": run.pk, "name": run.name, "status": run.status, "trigger": run.trigger,
            "started_at": run.started_at, "finished_at": run.finished_at}


def matching_freshness(*, now=None) -> dict:
    """The freshness badge of the matching jobs, with their last run and last success."""
    now = now or timezone.now()
    runs = JobRun.objects.filter(name__in=MATCHING_JOBS).exclude(status=JobRunStatus.SKIPPED).exclude(ABANDONED_RUNS)
    last_run = runs.exclude(status=JobRunStatus.QUEUED).order_by("-started_at").first()
    last_success = runs.filter(status=JobRunStatus.SUCCEEDED).order_by("-finished_at").first()
    if last_run is None:
        badge = Freshness.NEVER
    elif last_success is not None and last_success.finished_at >= now - timedelta(hours=FRESH_HOURS):
        badge = Freshness.OK
    else:
        badge = Freshness.STALE
    return {
        "badge": badge,
        "fresh_within_hours": FRESH_HOURS,
        "last_run": _run_summary(last_run),
        "last_success_at": last_success.finished_at if last_success else None,
    }


def leads_matched_since(since) -> int:
    """Leads the recovery and retry jobs matched since `since` (queue and tracking rows)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(DISTINCT lead) FROM (
                SELECT lead_source_pk AS lead FROM ops.cabinet_kpi_red_recovery_queue
                WHERE status = 'matched' AND matched_at >= %(since)s
                UNION ALL
                SELECT source_id FROM ops.identity_matching_jobs
                WHERE status = 'matched' AND last_attempt_at >= %(since)s
            ) matched
            """,
            {"since": since},
        )
        return cursor.fetchone()[0]


def job_last_outcomes() -> list[dict]:
    """Per job name in ops.job_runs: its last run (start, end, status), last success and last failure.

    Abandoned runs (their process died; a later run closed them) are neither a run nor a failure here.

    Index-only work on (name, started_at): the names come from a skip scan and each figure is the
    first matching row of its name, so the cost stays flat however many runs accumulate.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH RECURSIVE job(name) AS (
                -- the distinct job names, one index probe each
                (SELECT name FROM ops.job_runs ORDER BY name LIMIT 1)
                UNION ALL
                SELECT (SELECT r.name FROM ops.job_runs r WHERE r.name > job.name ORDER BY r.name LIMIT 1)
                FROM job WHERE job.name IS NOT NULL
            )
            SELECT job.name, last.started_at AS last_run_at, last.finished_at AS last_finished_at,
                   last.status AS last_status, ok.finished_at AS last_success_at, bad.finished_at AS last_failure_at
            FROM job
            LEFT JOIN LATERAL (SELECT started_at, finished_at, status FROM ops.job_runs r
                               WHERE r.name = job.name AND NOT {ABANDONED_SQL}
                               ORDER BY r.started_at DESC LIMIT 1) last ON true
            LEFT JOIN LATERAL (SELECT finished_at FROM ops.job_runs r
                               WHERE r.name = job.name AND r.status = '{JobRunStatus.SUCCEEDED}'
                               ORDER BY r.started_at DESC LIMIT 1) ok ON true
            LEFT JOIN LATERAL (SELECT finished_at FROM ops.job_runs r
                               WHERE r.name = job.name AND r.status = '{JobRunStatus.FAILED}' AND NOT {ABANDONED_SQL}
                               ORDER BY r.started_at DESC LIMIT 1) bad ON true
            WHERE job.name IS NOT NULL
            ORDER BY job.name
            """
        )
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def recovery_status(*, now=None) -> dict:
    """ACTIVE / NO_SIGNAL / NOT_CONFIGURED for the red-KPI recovery, with what it was read from."""
    now = now or timezone.now()
    schedule = job_schedule(RECOVERY_JOB)
    matched = leads_matched_since(now - timedelta(hours=SIGNAL_HOURS))
    if schedule is None:
        status = RecoveryStatus.NOT_CONFIGURED
    elif matched:
        status = RecoveryStatus.ACTIVE
    else:
        status = RecoveryStatus.NO_SIGNAL
    return {
        "status": status,
        "scheduled": schedule is not None,
        "schedule_cron": schedule.cron if schedule else None,
        "next_run_at": schedule.next_run if schedule else None,
        "matched_last_48h": matched,
    }
