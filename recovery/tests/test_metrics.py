"""The business figures of /metrics: their values against data the test made, the cache, and what they read."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from identity.models import DRIVERS_TABLE, LEADS_TABLE, IdentityUnmatched, JobRun, JobRunStatus
from identity.tests.factories import lima_today, link_lead, make_claim, make_lead, make_person
from recovery.heartbeat import heartbeat_beat
from recovery.metrics import metrics_read, metrics_snapshot
from recovery.models import IdentityMatchingJob, KpiRedRecoveryQueue, WorkStatus
from recovery.schedules import schedules_sync

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_snapshot():
    cache.clear()


def _queued(lead, status: str, *, matched_hours_ago: float | None = None, reason: str | None = None):
    now = timezone.now()
    return KpiRedRecoveryQueue.objects.create(
        lead_source_pk=lead.source_pk, status=status, fail_reason=reason, attempts=1,
        matched_person=make_person() if status == WorkStatus.MATCHED else None,
        matched_at=now - timedelta(hours=matched_hours_ago) if matched_hours_ago is not None else None,
        lead_created_at=lead.created_at,
    )


def _unmatched(source_pk: str, reason: str, *, status: str = "open", table: str = LEADS_TABLE):
    IdentityUnmatched.objects.create(source_table=table, source_pk=source_pk, reason_code=reason,
                                     snapshot_date=lima_today(), status=status)


def test_backlog_by_risk_counts_leads_without_link_or_claim():
    make_lead(days_ago=0)
    make_lead(days_ago=13)
    make_lead(days_ago=14)
    make_lead(days_ago=45)
    make_lead(days_ago=46)
    link_lead(make_lead(days_ago=1), make_person())
    make_claim(make_lead(days_ago=1), milestone=1)
    assert metrics_read()["backlog_by_risk"] == {"high": 2, "medium": 2, "low": 1}


def test_queue_rows_by_status_and_leads_matched_in_24_hours():
    _queued(make_lead(days_ago=3), WorkStatus.PENDING)
    _queued(make_lead(days_ago=3), WorkStatus.FAILED, reason="NO_CANDIDATES")
    recent = make_lead(days_ago=3)
    _queued(recent, WorkStatus.MATCHED, matched_hours_ago=1)
    _queued(make_lead(days_ago=3), WorkStatus.MATCHED, matched_hours_ago=30)
    # The same lead matched by retry too is one lead; another retry match counts on its own.
    IdentityMatchingJob.objects.create(source_id=recent.source_pk, status=WorkStatus.MATCHED,
                                       last_attempt_at=timezone.now(), matched_person=make_person())
    IdentityMatchingJob.objects.create(source_id=make_lead(days_ago=3).source_pk, status=WorkStatus.MATCHED,
                                       last_attempt_at=timezone.now() - timedelta(hours=2),
                                       matched_person=make_person())
    figures = metrics_read()
    assert figures["queue_by_status"] == {"pending": 1, "matched": 2, "failed": 1}
    assert figures["matched_last_24h"] == 2


def test_open_unmatched_by_reason_and_the_review_backlog():
    _unmatched("L-1", "CONFLICT_MULTIPLE_CANDIDATES")
    _unmatched("L-2", "CONFLICT_MULTIPLE_CANDIDATES")
    _unmatched("L-3", "WEAK_MATCH_ONLY")
    _unmatched("L-4", "NO_CANDIDATES")
    _unmatched("L-5", "WEAK_MATCH_ONLY", status="resolved")
    _unmatched("D-1", "NO_CANDIDATES", table=DRIVERS_TABLE)
    figures = metrics_read()
    assert figures["unmatched_open_by_reason"] == {
        "MISSING_IDENTIFIERS": 0, "NO_CANDIDATES": 1, "WEAK_MATCH_ONLY": 1, "CONFLICT_MULTIPLE_CANDIDATES": 2,
        "ERROR": 0,
    }
    assert figures["review_waiting"] == 3


def test_each_jobs_last_success_and_failure_and_the_last_guardrails_run():
    now = timezone.now()

    def run(name, status, hours_ago, counts=None):
        started = now - timedelta(hours=hours_ago, minutes=5)
        row = JobRun.objects.create(name=name, status=status, counts=counts or {},
                                    finished_at=now - timedelta(hours=hours_ago) if status != "running" else None)
        JobRun.objects.filter(pk=row.pk).update(started_at=started)

    run("recover_kpi_red_leads", JobRunStatus.SUCCEEDED, 5)
    run("recover_kpi_red_leads", JobRunStatus.FAILED, 3)
    run("recover_kpi_red_leads", JobRunStatus.SUCCEEDED, 1)
    run("recover_kpi_red_leads", JobRunStatus.RUNNING, 0)
    run("match_leads", JobRunStatus.FAILED, 2)
    run("guardrails", JobRunStatus.SUCCEEDED, 4, {"check_origin_missing": 0, "checks": 6, "checks_failed": 0})
    run("guardrails", JobRunStatus.FAILED, 2, {"check_origin_missing": 4, "checks": 6, "checks_failed": 1})
    figures = metrics_read()
    recover = figures["jobs"]["recover_kpi_red_leads"]
    assert recover["last_success_at"] == now - timedelta(hours=1)
    assert recover["last_failure_at"] == now - timedelta(hours=3)
    assert figures["jobs"]["match_leads"] == {"last_success_at": None, "last_failure_at": now - timedelta(hours=2)}
    # Jobs the diagnosis expects are listed before their first run.
    assert figures["jobs"]["seed_kpi_red_queue"] == {"last_success_at": None, "last_failure_at": None}
    assert figures["guardrails"] == {"finished_at": now - timedelta(hours=2), "checks_failed": 1,
                                     "offenders": {"check_origin_missing": 4}}


def test_schedules_and_qcluster_heartbeats():
    assert (metrics_read()["schedules"], metrics_read()["qcluster_last_seen"]) == (0, None)
    schedules_sync()
    seen = timezone.now() - timedelta(minutes=1)
    heartbeat_beat(host="ops-1", pid=11, cluster="ct4", now=seen)
    heartbeat_beat(host="ops-1", pid=12, cluster="ct4", now=seen - timedelta(minutes=20))
    figures = metrics_read()
    assert (figures["schedules"], figures["qcluster_last_seen"], figures["qcluster_workers"]) == (6, seen, 1)


def test_the_snapshot_is_cached_for_the_configured_seconds():
    make_lead(days_ago=1)
    assert metrics_snapshot()["backlog_by_risk"]["high"] == 1
    make_lead(days_ago=1)
    assert metrics_snapshot()["backlog_by_risk"]["high"] == 1  # within CT4_METRICS_CACHE_SECONDS
    with override_settings(CT4_METRICS_CACHE_SECONDS=0):
        assert metrics_snapshot()["backlog_by_risk"]["high"] == 2


def test_the_snapshot_reads_no_view_but_the_backlog():
    """Cheap by construction: the big views (gaps, limbo, funnel, money, daily metrics) are never read."""
    with CaptureQueriesContext(connection) as queries:
        metrics_read()
    views = {word for q in queries for word in q["sql"].replace('"', " ").split() if ".v_" in word}
    assert views == {"ops.v_cabinet_kpi_red_backlog"}
    assert len(queries) <= 10
