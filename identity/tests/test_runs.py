"""identity.runs: how a command ends (one exit-status function) and the rolled-back dry run, on the
one identity job that changes data, refresh_drivers_index; job_run_succeeded after a committed run."""

import json
import logging
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from identity.models import DriverIndexEntry, IdentityLink, JobRun, Person
from identity.runs import (
    ANALYZE_MIN_CHANGED,
    EXIT_LOCKED,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    command_exit,
    job_run,
    job_run_succeeded,
    rolled_back,
    tables_analyze,
)
from identity.tests.factories import make_driver

pytestmark = pytest.mark.django_db


def test_command_exit_with_a_message_is_a_one_line_command_error_and_without_one_a_plain_exit():
    with pytest.raises(CommandError) as error:
        command_exit(EXIT_USAGE, "--limit must be >= 0")
    assert (error.value.returncode, str(error.value)) == (2, "--limit must be >= 0")
    with pytest.raises(SystemExit) as exit_:
        command_exit(EXIT_PROBLEMS)
    assert exit_.value.code == 1
    assert (EXIT_USAGE, EXIT_LOCKED) == (2, 3)


def test_rolled_back_returns_the_result_and_keeps_nothing():
    assert rolled_back(lambda: (Person.objects.create(), Person.objects.count())[1]) == 1
    assert not Person.objects.exists()


def test_refresh_drivers_index_dry_run_reports_the_new_persons_and_writes_nothing():
    make_driver(first_name="Rosa", last_name="Quispe Mamani", phone="987111222", document="41234567")
    make_driver(first_name="Julio", last_name="Ñahui Condori", phone="987333444", document="42345678")
    out = StringIO()
    call_command("refresh_drivers_index", "--dry-run", "--json", stdout=out)
    figures = json.loads(out.getvalue())
    assert (figures["changed"], figures["new_persons"], figures["dry_run"]) == (2, 2, True)
    assert not DriverIndexEntry.objects.exists()
    assert not Person.objects.exists() and not IdentityLink.objects.exists()
    assert not JobRun.objects.exists()
    # The real run then does what the dry run said.
    call_command("refresh_drivers_index", "--json", stdout=StringIO())
    assert DriverIndexEntry.objects.count() == 2 and Person.objects.count() == 2


def _job_that_links() -> None:
    with job_run("test_job") as run:
        run.add(linked=1)


@pytest.mark.django_db(transaction=True)
def test_a_succeeded_run_is_announced_once_and_a_failing_receiver_fails_nothing(caplog):
    heard = []

    def listen(sender, **kwargs):
        heard.append(kwargs)

    def broken(sender, **kwargs):
        raise RuntimeError("receiver broke")

    logging.getLogger("ct4.jobs").addHandler(caplog.handler)
    job_run_succeeded.connect(listen)
    job_run_succeeded.connect(broken)
    try:
        with job_run("test_job", params={"limit": 5}) as run:
            run.add(linked=2)
        with pytest.raises(ValueError), job_run("test_job") as failing:
            raise ValueError("the job broke")
        rolled_back(_job_that_links)  # a dry run: nothing of it kept, so not announced
    finally:
        job_run_succeeded.disconnect(listen)
        job_run_succeeded.disconnect(broken)
        logging.getLogger("ct4.jobs").removeHandler(caplog.handler)
    assert heard == [{"signal": job_run_succeeded, "name": "test_job", "run_id": run.run.pk,
                      "params": {"limit": 5}, "counts": {"linked": 2}}]
    assert JobRun.objects.get(pk=run.run.pk).status == "succeeded"
    assert JobRun.objects.get(pk=failing.run.pk).status == "failed"
    assert f"test_job run={run.run.pk}: a receiver of job_run_succeeded failed" in caplog.text
    assert "RuntimeError: receiver broke" in caplog.text


def _reltuples(cursor, table: str) -> float:
    cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
    return cursor.fetchone()[0]


def test_a_small_run_does_not_analyze_and_a_big_one_or_an_unsized_call_does():
    # pg_class.reltuples is -1 until a table is first analyzed, and ANALYZE sets it at once (unlike the
    # statistics system's counters, which a backend reports later). A temporary table: no autovacuum.
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE analyze_probe AS SELECT g AS n FROM generate_series(1, 10) g")
        assert _reltuples(cursor, "analyze_probe") == -1
        assert tables_analyze("analyze_probe", changed=10) == []
        assert _reltuples(cursor, "analyze_probe") == -1
        assert tables_analyze("analyze_probe", changed=ANALYZE_MIN_CHANGED) == ["analyze_probe"]
        assert _reltuples(cursor, "analyze_probe") == 10
        cursor.execute("INSERT INTO analyze_probe SELECT g FROM generate_series(11, 20) g")
        assert tables_analyze("analyze_probe") == ["analyze_probe"]
        assert _reltuples(cursor, "analyze_probe") == 20
