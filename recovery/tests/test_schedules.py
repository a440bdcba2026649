"""Schedules (setup_schedules), the task entry point, freshness and recovery status, and a real qcluster."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule

from identity.domain import PARK_ZONE
from identity.models import JobRun, JobRunStatus
from identity.runs import lock_key
from identity.tests.factories import link_lead, make_lead, make_person
from recovery.models import KpiRedRecoveryQueue, WorkStatus
from recovery.schedules import PREFIX, declared_schedules, schedules_sync
from recovery.status import matching_freshness, recovery_status
from recovery.tasks import TASK_JOBS, job_task
from recovery.tests.qcluster import qcluster_running


def run_command(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_setup_schedules_creates_the_spec_schedules_once():
    first = json.loads(run_command("setup_schedules", "--json"))
    assert sorted(c["action"] for c in first) == ["create"] * 6
    by_job = {s.args.strip("'"): s for s in Schedule.objects.filter(name__startswith=PREFIX)}
    assert {job: s.cron for job, s in by_job.items()} == {
        "seed_kpi_red_queue": "0 * * * *",
        "recover_kpi_red_leads": "20 */2 * * *",
        "reconcile_cabinet_leads_pipeline": "*/15 * * * *",
        "retry_identity_matching": "0 2 * * *",
        "guardrails": "40 * * * *",
        "rules_precision": "50 * * * *",
    }
    # Cron is read in Lima time: the daily retry's next run is at 02:00 there.
    retry_next = by_job["retry_identity_matching"].next_run.astimezone(PARK_ZONE)
    assert (retry_next.hour, retry_next.minute) == (2, 0)
    assert all(s.func == "recovery.tasks.job_task" for s in by_job.values())
    again = json.loads(run_command("setup_schedules", "--json"))
    assert {c["action"] for c in again} == {"unchanged"}
    assert Schedule.objects.count() == 6


@pytest.mark.django_db
def test_setup_schedules_updates_removes_ours_and_leaves_others_alone():
    schedules_sync()
    Schedule.objects.filter(name=f"{PREFIX}guardrails").update(cron="0 0 * * *")
    Schedule.objects.create(name=f"{PREFIX}old_job", func="recovery.tasks.job_task", args="'old_job'",
                            schedule_type=Schedule.HOURLY)
    Schedule.objects.create(name="someone else's", func="math.floor", args="1.5", schedule_type=Schedule.HOURLY)

    dry = run_command("setup_schedules", "--dry-run")
    assert "would update" in dry and "would delete" in dry and "dry run: nothing written" in dry
    assert Schedule.objects.get(name=f"{PREFIX}guardrails").cron == "0 0 * * *"

    changes = {c.name: c.action for c in schedules_sync()}
    assert changes[f"{PREFIX}guardrails"] == "update" and changes[f"{PREFIX}old_job"] == "delete"
    assert Schedule.objects.get(name=f"{PREFIX}guardrails").cron == "40 * * * *"
    assert not Schedule.objects.filter(name=f"{PREFIX}old_job").exists()
    assert Schedule.objects.filter(name="someone else's").exists()


def test_q_cluster_retries_only_after_a_task_could_have_timed_out():
    assert settings.Q_CLUSTER["retry"] > settings.Q_CLUSTER["timeout"]
    assert settings.Q_CLUSTER["orm"] == "default"


@pytest.mark.django_db
def test_job_task_rejects_unknown_jobs_and_parameters():
    with pytest.raises(ValueError, match="unknown job"):
        job_task("drop_everything")
    with pytest.raises(ValueError, match="does not take"):
        job_task("seed_kpi_red_queue", limit=3)
    assert not JobRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_job_task_skips_a_singleton_that_another_process_runs():
    """The advisory lock is what stops overlapping runs, whoever started the other one."""
    params = connection.get_connection_params()
    other = psycopg.connect(**{k: v for k, v in params.items() if k in {"dbname", "host", "port", "user", "password"}},
                            autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lock_key("seed_kpi_red_queue")])
        result = job_task("seed_kpi_red_queue")
    finally:
        other.close()
    assert result == {"job": "seed_kpi_red_queue", "skipped": True, "reason": "another run holds the lock"}
    assert list(JobRun.objects.values_list("status", "trigger")) == [(JobRunStatus.SKIPPED, "schedule")]


@pytest.mark.django_db
def test_freshness_is_never_then_ok_then_stale():
    assert matching_freshness()["badge"] == "NEVER"
    now = timezone.now()
    JobRun.objects.create(name="reconcile_cabinet_leads_pipeline", status=JobRunStatus.SUCCEEDED,
                          started_at=now - timedelta(hours=30), finished_at=now - timedelta(hours=30))
    assert matching_freshness()["badge"] == "STALE"
    # A failed run does not make the data fresh, nor does a run of another job.
    JobRun.objects.create(name="recover_kpi_red_leads", status=JobRunStatus.FAILED, started_at=now,
                          finished_at=now)
    JobRun.objects.create(name="guardrails", status=JobRunStatus.SUCCEEDED, started_at=now, finished_at=now)
    stale = matching_freshness()
    assert stale["badge"] == "STALE" and stale["last_run"]["name"] == "recover_kpi_red_leads"
    JobRun.objects.create(name="retry_identity_matching", status=JobRunStatus.SUCCEEDED,
                          started_at=now - timedelta(hours=2), finished_at=now - timedelta(hours=1))
    assert matching_freshness()["badge"] == "OK"
    assert matching_freshness(now=now + timedelta(hours=25))["badge"] == "STALE"


@pytest.mark.django_db
def test_recovery_status_follows_the_schedule_and_the_matches():
    assert recovery_status()["status"] == "NOT_CONFIGURED"
    schedules_sync()
    status = recovery_status()
    assert (status["status"], status["scheduled"], status["schedule_cron"]) == ("NO_SIGNAL", True, "20 */2 * * *")
    lead = make_lead(first_name="Rosa", last_name="Quispe Mamani")

    person = make_person()
    link_lead(lead, person)
    KpiRedRecoveryQueue.objects.create(lead_source_pk=lead.source_pk, status=WorkStatus.MATCHED,
                                       matched_person=person, matched_at=timezone.now() - timedelta(hours=47))
    assert recovery_status()["status"] == "ACTIVE"
    assert recovery_status(now=timezone.now() + timedelta(hours=2))["status"] == "NO_SIGNAL"
    Schedule.objects.filter(name=f"{PREFIX}recover_kpi_red_leads").update(repeats=0)
    assert recovery_status()["status"] == "NOT_CONFIGURED"


def test_every_declared_schedule_names_a_task_job():
    for spec in declared_schedules():
        assert spec.job in TASK_JOBS
        assert set(spec.kwargs) <= TASK_JOBS[spec.job].params


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_qcluster_runs_a_due_schedule_and_stops_on_sigterm():
    """Start `manage.py qcluster` on the test database, let it pick a due schedule, stop it by PID."""
    make_lead(first_name="Rosa", last_name="Quispe Mamani", days_ago=1)
    schedules_sync()
    Schedule.objects.filter(name=f"{PREFIX}seed_kpi_red_queue").update(next_run=timezone.now() - timedelta(minutes=1))
    with qcluster_running(workers=1) as process:
        deadline = time.monotonic() + 90  # the cluster looks at schedules every 30 s
        run = None
        while time.monotonic() < deadline and run is None:
            time.sleep(1)
            assert process.poll() is None, process.stdout.read()
            run = JobRun.objects.filter(name="seed_kpi_red_queue", status=JobRunStatus.SUCCEEDED).first()
    assert run is not None, f"no seed run recorded within 90 s; cluster output:\n{process.output[-3000:]}"
    assert run.trigger == "schedule" and run.counts["inserted"] == 1
    assert KpiRedRecoveryQueue.objects.filter(status=WorkStatus.PENDING).count() == 1
    assert process.returncode is not None
    # The schedule moved on to its next hour.
    assert Schedule.objects.get(name=f"{PREFIX}seed_kpi_red_queue").next_run > timezone.now()
