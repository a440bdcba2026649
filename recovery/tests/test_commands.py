"""What every job command shares (identity.runs.JobCommand): singletons exit 3 and record a skipped run,
abandoned runs are closed, the exit status of a real process."""

import os
import subprocess
import sys

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from identity.models import JobRun
from identity.runs import lock_key
from recovery.tests.factories import job_database_url, recover_process

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
