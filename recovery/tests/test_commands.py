"""What every job command shares (identity.runs.JobCommand): singletons exit 3 and record a skipped run,
abandoned runs are closed, the exit status of a real process, and each data-changing job's --dry-run
(it reports what the job did, and nothing is kept)."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from identity.index import drivers_index_refresh
from identity.models import Claim, IdentityLink, JobRun
from identity.runs import lock_key
from identity.tests.factories import lima_today, make_trips
from recovery.models import KpiRedRecoveryQueue
from recovery.queue import queue_seed
from recovery.tests.factories import job_database_url, recover_process, snapshot, stranger, twin

pytestmark = pytest.mark.django_db


SINGLETONS = ["seed_kpi_red_queue", "retry_identity_matching", "reconcile_cabinet_leads_pipeline",
              "backfill_identity_origins_for_links"]


def _hold_lock(name: str) -> psycopg.Connection:
    db = connection.settings_dict
    holder = psycopg.connect(dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None,
                             host=db["HOST"] or None, port=db["PORT"] or None, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", [lock_key(name)])
    return holder


def _release(holder: psycopg.Connection) -> None:
    # Unlock before closing: the server ends a closed session (and frees its locks) a moment later.
    holder.execute("SELECT pg_advisory_unlock_all()")
    holder.close()


@pytest.mark.parametrize("name", SINGLETONS)
def test_singleton_job_exits_3_while_another_copy_holds_its_lock(name):
    holder = _hold_lock(name)
    try:
        with pytest.raises(CommandError) as error:
            call_command(name)
        assert error.value.returncode == 3 and "already running" in str(error.value)
    finally:
        _release(holder)
    assert JobRun.objects.get(name=name).status == "skipped"
    call_command(name, "--json")  # the lock is free again


def test_a_run_closes_runs_left_running_by_a_killed_process_of_any_job():
    """A live run holds its run lock on its session: rows 'running' without one were left by a dead process."""
    dead = JobRun.objects.create(name="seed_kpi_red_queue", status="running")
    other_job = JobRun.objects.create(name="retry_identity_matching", status="running")
    call_command("seed_kpi_red_queue", "--json")
    dead.refresh_from_db()
    other_job.refresh_from_db()
    assert (dead.status, dead.error.split(":")[0]) == ("failed", "abandoned") and dead.finished_at
    assert (other_job.status, other_job.error.split(":")[0]) == ("failed", "abandoned")
    assert JobRun.objects.filter(name="seed_kpi_red_queue", status="succeeded").count() == 1


@pytest.mark.django_db(transaction=True)
def test_singleton_process_exit_code_and_recover_is_not_a_singleton():
    holder = _hold_lock("seed_kpi_red_queue")
    recover_holder = _hold_lock("recover_kpi_red_leads")
    try:
        env = {**os.environ, "DATABASE_URL": job_database_url()}
        env.pop("CT4_DB_NAME", None)
        seed = subprocess.run([sys.executable, "manage.py", "seed_kpi_red_queue"], cwd=settings.BASE_DIR, env=env,
                              capture_output=True, text=True, timeout=60)
        assert seed.returncode == 3 and "already running" in seed.stderr
        recover = recover_process()
        out, err = recover.communicate(timeout=60)
        assert recover.returncode == 0, err[-2000:]
    finally:
        _release(holder)
        _release(recover_holder)


# --- --dry-run: the job runs in one transaction, reports what it did, and everything is rolled back ---


def _dry_run(name: str, *args: str) -> dict:
    """Run a command with --dry-run --json; its figures, after checking nothing was kept (its run row neither)."""
    before, runs = snapshot(), JobRun.objects.count()
    out = StringIO()
    call_command(name, "--dry-run", "--json", *args, stdout=out)
    assert snapshot() == before
    assert JobRun.objects.count() == runs
    figures = json.loads(out.getvalue())
    assert figures["dry_run"] is True
    return figures


def test_seed_dry_run_reports_the_backlog_it_would_queue_and_queues_nothing():
    stranger(days_ago=2), stranger(days_ago=20)
    assert _dry_run("seed_kpi_red_queue")["inserted"] == 2
    assert not KpiRedRecoveryQueue.objects.exists()
    out = StringIO()
    call_command("seed_kpi_red_queue", "--dry-run", stdout=out)
    assert out.getvalue().startswith("dry run, rolled back: seeded 2 backlog leads: 2 new")


def test_recover_dry_run_reports_the_match_it_would_make_and_links_nothing():
    driver, lead = twin(days_ago=3)
    stranger(days_ago=3)
    drivers_index_refresh()
    queue_seed()
    figures = _dry_run("recover_kpi_red_leads")
    assert (figures["processed"], figures["matched"], figures["failed"]) == (2, 1, 1)
    assert set(KpiRedRecoveryQueue.objects.values_list("status", flat=True)) == {"pending"}
    assert not IdentityLink.objects.filter(source_pk=lead.source_pk).exists()


def test_recover_dry_run_refuses_worker_processes():
    with pytest.raises(CommandError) as error:
        call_command("recover_kpi_red_leads", "--dry-run", "--workers", "2")
    assert error.value.returncode == 2


def test_retry_dry_run_reports_the_link_it_would_create_and_creates_none():
    driver, lead = twin(days_ago=5)
    drivers_index_refresh()
    figures = _dry_run("retry_identity_matching")
    assert (figures["processed"], figures["newly_linked"]) == (1, 1)
    assert not IdentityLink.objects.filter(source_pk=lead.source_pk).exists()


def test_reconcile_dry_run_reports_links_and_claims_it_would_create_and_keeps_none():
    driver, lead = twin(days_ago=4)
    make_trips(driver, {lima_today() - timedelta(days=2): 6})
    drivers_index_refresh()
    figures = _dry_run("reconcile_cabinet_leads_pipeline")
    assert figures["newly_linked"] == 1 and figures["claims_created"] == 2  # milestones 1 and 5
    assert not IdentityLink.objects.filter(source_pk=lead.source_pk).exists()
    assert not Claim.objects.exists()
