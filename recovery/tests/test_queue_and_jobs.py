"""The red-KPI queue and the recovery jobs on a real PostgreSQL: seed, recover (with real worker
processes, a SIGKILL mid-batch), several simulated days, retry, reconcile, backfill, singletons."""

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from identity.index import drivers_index_refresh
from identity.models import CabinetLead, Claim, DriverIndexEntry, IdentityLink, IdentityOrigin, IdentityUnmatched, JobRun
from identity.runs import lock_key
from identity.tests.factories import (
    lima_datetime,
    lima_today,
    link_driver,
    link_lead,
    make_claim,
    make_driver,
    make_lead,
    make_person,
    make_trips,
    set_origin,
)
from recovery.claims import claims_create_expected
from recovery.jobs.backfill import origins_backfill
from recovery.jobs.reconcile import pipeline_reconcile
from recovery.jobs.recover import queue_recover
from recovery.jobs.retry import identity_matching_retry
from recovery.models import IdentityMatchingJob, KpiRedRecoveryQueue
from recovery.queue import queue_seed
from recovery.views import KpiRedBacklog, KpiRedRecoveryMetricsDaily

pytestmark = pytest.mark.django_db

LEADS = "module_ct_cabinet_leads"
_n = itertools.count(1)

# Every table a job writes, with xmin: a row rewritten with equal values still shows up (each
# batch runs in its own savepoint, so its writes carry a new transaction id).
SNAPSHOT_SQL = {
    "queue": "SELECT xmin::text, lead_source_pk, status, attempts, fail_reason, matched_person_key, "
             "last_attempt_at, next_attempt_at, matched_at, lead_created_at FROM ops.cabinet_kpi_red_recovery_queue",
    "jobs": "SELECT xmin::text, source_id, status, attempt_count, fail_reason, matched_person_key "
            "FROM ops.identity_matching_jobs",
    "links": "SELECT xmin::text, source_table, source_pk, person_key FROM canon.identity_links",
    "origins": "SELECT xmin::text, person_key, origin_source_id FROM canon.identity_origin",
    "unmatched": "SELECT xmin::text, source_pk, reason_code, status FROM canon.identity_unmatched",
    "claims": "SELECT xmin::text, lead_source_pk, milestone, status, amount, driver_id FROM public.cabinet_milestone_claims",
}


def snapshot() -> dict:
    with connection.cursor() as cursor:
        result = {}
        for name, sql in SNAPSHOT_SQL.items():
            cursor.execute(f"{sql} ORDER BY 2, 3")
            result[name] = cursor.fetchall()
        return result


def scalar(sql: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchone()[0]


# --- data that looks like a Lima park's ------------------------------------------------------


# Disjoint surname pools: drivers (and their twin leads) never share a full name with a stranger.
GIVEN = ("José", "María", "Lucía", "Jesús", "Ángel", "Rocío", "Martín", "Sofía", "Raúl", "Inés")
DRIVER_SURNAMES = ("Quispe", "Mamani", "Huamán", "Flores", "Ñahui", "Condori", "Rodríguez", "Chávez", "Gutiérrez",
                   "Ramírez", "Apaza", "Cusi", "Vilca", "Ticona", "Huanca", "Choque", "Layme", "Sánchez", "Torres",
                   "Rojas")
STRANGER_SURNAMES = ("Yupanqui", "Ccahuana", "Achahui", "Pumacahua", "Sullca", "Huaylla", "Ccorimanya", "Quillahuamán",
                     "Chuquimia", "Taipe", "Ñaupari", "Arotinco", "Cjuro", "Huillca", "Añamuro", "Callañaupa",
                     "Chambilla", "Soncco", "Tintaya", "Ylla")


def full_name(n: int, surnames: tuple) -> dict:
    """A distinct given name + two surnames for every n below 4000."""
    return {"first_name": GIVEN[n % 10],
            "last_name": f"{surnames[(n // 10) % 20]} {surnames[(n // 200) % 20]}"}


def twin(*, days_ago: int = 1, **lead_fields):
    """A driver and a lead of the same human (same names, mobile and DNI): the matcher links them."""
    n = next(_n)
    person = {**full_name(n, DRIVER_SURNAMES), "phone": f"95{n:07d}", "document": f"{46_000_000 + n:08d}",
              "email": None, "birth_date": None}
    driver = make_driver(**person)
    lead = make_lead(days_ago=days_ago, **{**person, **lead_fields})
    return driver, lead


def stranger(*, days_ago: int = 1, **fields):
    """A lead no driver resembles: NO_CANDIDATES."""
    n = next(_n)
    data = {**full_name(n, STRANGER_SURNAMES), "phone": f"96{n:07d}", "document": None, "email": None,
            "birth_date": None}
    return make_lead(days_ago=days_ago, **{**data, **fields})


def faceless(*, days_ago: int = 1, **fields):
    """A lead with nothing to match on: MISSING_IDENTIFIERS."""
    blank = {"first_name": None, "last_name": None, "phone": None, "document": None, "email": None, "birth_date": None}
    return make_lead(days_ago=days_ago, **{**blank, **fields})


def bulk_leads(count: int, *, matchable_every: int = 25) -> int:
    """`count` backlog leads (bulk insert), one in `matchable_every` the twin of a driver; returns
    how many are matchable. Lead dates spread over the last 60 days."""
    drivers, leads = [], []
    now = timezone.now()
    for i in range(count):
        n = next(_n)
        created = now - timedelta(days=i % 60, minutes=i)
        if i % matchable_every == 0:
            person = {**full_name(n, DRIVER_SURNAMES), "phone": f"97{n:07d}", "document": f"{47_000_000 + n:08d}"}
            drivers.append(make_driver(**person, email=None, birth_date=None))
        else:
            person = {**full_name(n, STRANGER_SURNAMES), "phone": f"98{n:07d}", "document": None}
        leads.append(CabinetLead(id=900_000 + n, created_at=created, park_id="park-lima-norte", **person))
    CabinetLead.objects.bulk_create(leads)
    return len(drivers)


def shift_current_step(day, hour: int = 15) -> None:
    """Move everything the step just wrote (stamped with the test transaction's now()) to `day`."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        now = cursor.fetchone()[0]
        delta = lima_datetime(day, hour) - now
        for table, columns in {
            "canon.identity_links": ["linked_at"],
            "canon.drivers_index": ["indexed_at"],
            "ops.cabinet_kpi_red_recovery_queue": ["last_attempt_at", "next_attempt_at", "matched_at"],
            "ops.identity_matching_jobs": ["last_attempt_at"],
        }.items():
            for column in columns:
                cursor.execute(f"UPDATE {table} SET {column} = {column} + %s WHERE {column} >= %s", [delta, now])


def queue_rows() -> dict:
    return {row.lead_source_pk: row for row in KpiRedRecoveryQueue.objects.all()}


def backlog() -> set:
    return set(KpiRedBacklog.objects.values_list("lead_source_pk", flat=True))


# --- 1. seed -------------------------------------------------------------------------------


def test_seed_makes_backlog_pending_leaves_matched_and_brings_failed_back_when_due():
    new = stranger(days_ago=2)
    make_driver()
    drivers_index_refresh()
    backoff_passed, backoff_running, index_changed = stranger(), stranger(), stranger()
    linked_elsewhere = stranger()
    matched = stranger()
    hour = timedelta(hours=1)
    now = timezone.now()
    failed = {"status": "failed", "attempts": 1, "fail_reason": "NO_CANDIDATES"}
    KpiRedRecoveryQueue.objects.create(lead_source_pk=backoff_passed.source_pk, **failed,
                                       last_attempt_at=now, next_attempt_at=now - hour)
    KpiRedRecoveryQueue.objects.create(lead_source_pk=backoff_running.source_pk, **failed,
                                       last_attempt_at=now + hour, next_attempt_at=now + 2 * hour)
    KpiRedRecoveryQueue.objects.create(lead_source_pk=index_changed.source_pk, **failed,
                                       last_attempt_at=now - 2 * hour, next_attempt_at=now + 2 * hour)
    KpiRedRecoveryQueue.objects.create(lead_source_pk=linked_elsewhere.source_pk, status="pending")
    person = make_person()
    # A matched row stays matched even when its lead is back in the backlog (its link was removed).
    KpiRedRecoveryQueue.objects.create(lead_source_pk=matched.source_pk, status="matched", attempts=1,
                                       matched_person=person, matched_at=now)
    link = link_lead(linked_elsewhere, person, decided_by="ana.revisora")

    result = queue_seed()

    rows = queue_rows()
    assert rows[new.source_pk].status == "pending" and rows[new.source_pk].lead_created_at == new.created_at
    assert rows[backoff_passed.source_pk].status == "pending"
    assert rows[backoff_passed.source_pk].attempts == 1  # seeding is not an attempt
    assert rows[backoff_running.source_pk].status == "failed"
    # last tried two hours ago; the drivers index changed since (indexed now)
    assert rows[index_changed.source_pk].status == "pending"
    assert rows[linked_elsewhere.source_pk].status == "matched"
    assert rows[linked_elsewhere.source_pk].matched_person_id == person.pk
    assert rows[linked_elsewhere.source_pk].matched_at == link.linked_at
    assert rows[matched.source_pk].status == "matched" and rows[matched.source_pk].attempts == 1
    assert (result.inserted, result.reset_to_pending, result.newly_matched_elsewhere) == (1, 2, 1)
    assert result.backlog == 5 and result.unchanged == 2  # backoff_running, matched
    assert JobRun.objects.get(name="seed_kpi_red_queue").status == "succeeded"

    before = snapshot()
    again = queue_seed()
    assert snapshot() == before
    assert (again.inserted, again.reset_to_pending, again.newly_matched_elsewhere) == (0, 0, 0)
    assert again.unchanged == again.backlog == 5


def test_seed_brings_failed_rows_back_when_a_driver_registers_later():
    lead = make_lead(days_ago=3, first_name="Raúl", last_name="Ñahui Gutiérrez", phone="951002003",
                     document="45123987", email=None, birth_date=None)
    make_driver()
    drivers_index_refresh()
    queue_seed()
    queue_recover()
    assert queue_rows()[lead.source_pk].status == "failed"
    # Back-date: the index was built two hours ago, the attempt was one hour ago (in this test's
    # transaction now() stands still). The driver registers now; the index is refreshed after.
    now = timezone.now()
    DriverIndexEntry.objects.update(indexed_at=now - timedelta(hours=2))
    KpiRedRecoveryQueue.objects.update(last_attempt_at=now - timedelta(hours=1))
    make_driver(first_name="Raúl", last_name="Ñahui Gutiérrez", phone="951002003", document="45123987")
    assert queue_seed().reset_to_pending == 0  # the index has not changed yet
    drivers_index_refresh()
    assert queue_seed().reset_to_pending == 1
    result = queue_recover()
    assert result.matched == 1 and lead.source_pk not in backlog()
    assert queue_rows()[lead.source_pk].attempts == 2


# --- 2. recover ----------------------------------------------------------------------------


def test_recover_drains_matched_leads_from_the_backlog_and_records_reasons(caplog):
    drivers = [twin(days_ago=d)[0] for d in (1, 2, 3)]
    twins = list(CabinetLead.objects.filter(phone__in=[d.phone for d in drivers]))
    lonely, blank = stranger(days_ago=4), faceless(days_ago=5)
    # Linked by a reviewer after seeding: matched with that link's person, not re-matched.
    reviewed = stranger(days_ago=6)
    drivers_index_refresh()
    queue_seed()
    person = make_person()
    link_lead(reviewed, person, decided_by="ana.revisora")
    logging.getLogger("ct4.jobs").addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ct4.jobs")

    result = queue_recover()

    rows = queue_rows()
    assert (result.processed, result.matched, result.failed) == (6, 4, 2)
    assert (result.linked_now, result.already_linked) == (3, 1)
    assert result.by_reason == {"NO_CANDIDATES": 1, "MISSING_IDENTIFIERS": 1}
    assert backlog() == {lonely.source_pk, blank.source_pk}
    for lead in twins:
        link = IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk)
        assert rows[lead.source_pk].status == "matched" and rows[lead.source_pk].matched_person_id == link.person_id
        assert IdentityOrigin.objects.get(person_id=link.person_id).origin_source_id == lead.source_pk
    assert rows[reviewed.source_pk].matched_person_id == person.pk
    assert not IdentityUnmatched.objects.filter(source_pk=reviewed.source_pk).exists()
    failed = rows[lonely.source_pk]
    assert (failed.status, failed.fail_reason, failed.attempts) == ("failed", "NO_CANDIDATES", 1)
    assert failed.next_attempt_at == failed.last_attempt_at + timedelta(hours=1)
    assert rows[blank.source_pk].fail_reason == "MISSING_IDENTIFIERS"
    jobs = {j.source_id: j for j in IdentityMatchingJob.objects.all()}
    assert len(jobs) == 6 and all(j.attempt_count == 1 for j in jobs.values())
    assert jobs[lonely.source_pk].status == "failed" and jobs[reviewed.source_pk].status == "matched"
    run = JobRun.objects.get(name="recover_kpi_red_leads")
    assert run.status == "succeeded" and run.counts["processed"] == 6 and run.counts["NO_CANDIDATES"] == 1
    batch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recover_kpi_red_leads run=")
                   and " batch=" in r.getMessage()]
    assert batch_lines and all(f" {k}=" in batch_lines[0] for k in ("processed", "matched", "failed", "pending"))
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert not any(d.phone in logged or d.document in logged for d in drivers)

    before = snapshot()
    again = queue_recover()
    assert again.processed == 0 and snapshot() == before


def test_recover_takes_high_risk_and_newest_first_within_the_limit():
    old, month, week, yesterday = (stranger(days_ago=d) for d in (60, 20, 6, 1))
    drivers_index_refresh()
    queue_seed()

    assert queue_recover(limit=2).processed == 2
    tried = {pk for pk, row in queue_rows().items() if row.attempts}
    assert tried == {yesterday.source_pk, week.source_pk}
    assert queue_recover(limit=1).processed == 1
    assert queue_rows()[month.source_pk].attempts == 1 and queue_rows()[old.source_pk].attempts == 0
    assert JobRun.objects.filter(name="recover_kpi_red_leads").count() == 2


def test_command_checks_its_arguments():
    with pytest.raises(CommandError) as error:
        call_command("recover_kpi_red_leads", "--batch-size", "100")
    assert error.value.returncode == 2


# --- 3 and 4. real processes: three at once, and one killed mid-batch ------------------------


def _database_url() -> str:
    db = connection.settings_dict
    user = quote(db["USER"] or "postgres")
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    # A socket directory is HOST, or (DATABASE_URL=postgresql://...@/db?host=/dir) OPTIONS' host.
    host = db["HOST"] or db["OPTIONS"].get("host") or ""
    if not host or host.startswith("/"):
        return f"postgresql://{user}{password}@/{db['NAME']}?host={quote(host or '/tmp')}"
    return f"postgresql://{user}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def _recover_process(*extra: str, sleep: float = 0) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": _database_url(), "CT4_TEST_SLEEP_IN_BATCH": str(sleep)}
    env.pop("CT4_DB_NAME", None)
    return subprocess.Popen(
        [sys.executable, "manage.py", "recover_kpi_red_leads", "--json", *extra],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _assert_nothing_half_written() -> None:
    # no matched queue row without its link to that person
    assert scalar("""
        SELECT count(*) FROM ops.cabinet_kpi_red_recovery_queue q
        LEFT JOIN canon.identity_links il ON il.source_table = %s AND il.source_pk = q.lead_source_pk
        WHERE q.status = 'matched' AND il.person_key IS DISTINCT FROM q.matched_person_key""", [LEADS]) == 0
    # no lead link whose person has no origin
    assert scalar("""
        SELECT count(*) FROM canon.identity_links il
        LEFT JOIN canon.identity_origin o ON o.person_key = il.person_key
        WHERE il.source_table = %s AND o.person_key IS NULL""", [LEADS]) == 0
    # every lead link belongs to a matched queue row
    assert scalar("SELECT count(*) FROM canon.identity_links WHERE source_table = %s", [LEADS]) == \
        KpiRedRecoveryQueue.objects.filter(status="matched").count()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_three_recovery_processes_drain_one_queue_without_taking_a_lead_twice():
    matchable = bulk_leads(1500)
    drivers_index_refresh()
    assert queue_seed().inserted == 1500

    # Each batch (500 leads) holds its rows for a second before committing, so the three
    # processes (started together) overlap and must skip each other's locked rows.
    procs = [_recover_process(sleep=1.0) for _ in range(3)]
    outputs = [proc.communicate(timeout=180) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sum(r["processed"] for r in results) == 1500
    assert sum(1 for r in results if r["processed"]) >= 2
    assert sum(r["matched"] for r in results) == matchable
    assert sum(r["failed"] for r in results) == 1500 - matchable
    assert set(KpiRedRecoveryQueue.objects.values_list("attempts", flat=True)) == {1}
    assert set(IdentityMatchingJob.objects.values_list("attempt_count", flat=True)) == {1}
    assert IdentityMatchingJob.objects.count() == 1500
    links = IdentityLink.objects.filter(source_table=LEADS)
    assert links.count() == links.values("source_pk").distinct().count() == matchable
    runs = JobRun.objects.filter(name="recover_kpi_red_leads")
    assert runs.count() == 3 and sum(r.counts.get("processed", 0) for r in runs) == 1500
    _assert_nothing_half_written()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_recovery_killed_mid_batch_then_rerun_loses_nothing_and_does_nothing_twice():
    matchable = bulk_leads(1000, matchable_every=10)
    drivers_index_refresh()
    queue_seed()

    # Two batches of 500; each sleeps 4 s after its writes, before its commit.
    proc = _recover_process(sleep=4.0)
    deadline = time.monotonic() + 90
    while KpiRedRecoveryQueue.objects.exclude(status="pending").count() < 500:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.5)  # the second batch has claimed and written, and not committed
    open_batches = scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND state = 'idle in transaction' AND pid <> pg_backend_pid()")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert open_batches == 1
    assert KpiRedRecoveryQueue.objects.filter(status="pending").count() == 500
    assert set(KpiRedRecoveryQueue.objects.exclude(status="pending").values_list("attempts", flat=True)) == {1}
    _assert_nothing_half_written()

    rerun = _recover_process()
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err[-2000:]
    assert json.loads(out)["processed"] == 500
    assert set(KpiRedRecoveryQueue.objects.values_list("attempts", flat=True)) == {1}
    assert set(IdentityMatchingJob.objects.values_list("attempt_count", flat=True)) == {1}
    assert IdentityLink.objects.filter(source_table=LEADS).count() == matchable
    _assert_nothing_half_written()
    assert backlog() == set(KpiRedRecoveryQueue.objects.filter(status="failed").values_list("lead_source_pk", flat=True))
    # The killed run could not record its end; the rerun saw no session holding its lock.
    killed = JobRun.objects.filter(name="recover_kpi_red_leads").order_by("started_at").first()
    assert (killed.status, killed.error.split(":")[0]) == ("failed", "abandoned")
    assert not JobRun.objects.filter(status="running").exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_workers_option_shares_the_limit_and_records_one_run(monkeypatch):
    bulk_leads(600)
    drivers_index_refresh()
    queue_seed()
    monkeypatch.setenv("CT4_TEST_SLEEP_IN_BATCH", "0.3")

    result = queue_recover(limit=450, workers=2, batch_size=100)

    assert result.processed == 450 and result.matched + result.failed == 450 and result.batches == 5
    assert KpiRedRecoveryQueue.objects.exclude(status="pending").count() == 450
    assert set(KpiRedRecoveryQueue.objects.exclude(status="pending").values_list("attempts", flat=True)) == {1}
    run = JobRun.objects.get(name="recover_kpi_red_leads")
    assert run.status == "succeeded" and run.counts["processed"] == 450 and run.counts["pending"] == 150


# --- 5. several simulated days ------------------------------------------------------------


def test_metrics_daily_invariants_hold_across_simulated_days():
    today = lima_today()
    day = {k: today - timedelta(days=k) for k in range(7)}

    def arrive(days_ago: int, lead_factory, **kw):
        return lead_factory(created_at=lima_datetime(day[days_ago], 9), **kw)

    def run_jobs(days_ago: int) -> None:
        queue_seed()
        queue_recover()
        shift_current_step(day[days_ago])

    # Day -6: two leads, one of them has a driver already.
    make_driver(first_name="José", last_name="Quispe Huamán", phone="951100001", document="41100001")
    drivers_index_refresh()
    a1 = arrive(6, make_lead, first_name="José", last_name="Quispe Huamán", phone="951100001", document="41100001",
                email=None, birth_date=None)
    a2 = arrive(6, make_lead, first_name="Sofía", last_name="Chávez Ramírez", phone="951100002", document="41100002",
                email=None, birth_date=None)
    shift_current_step(day[6], hour=8)
    run_jobs(6)
    # Day -4: a2's driver registers (index refresh) and two more leads arrive.
    make_driver(first_name="Sofía", last_name="Chávez Ramírez", phone="951100002", document="41100002")
    drivers_index_refresh()
    shift_current_step(day[4], hour=8)
    b1 = arrive(4, stranger)
    b2 = arrive(4, faceless)
    run_jobs(4)
    # Day -2: an imported claim takes b1 out of the red KPI; a new lead arrives.
    make_claim(b1, milestone=1, status="claimed", created_at=lima_datetime(day[2], 11))
    c1 = arrive(2, stranger)
    run_jobs(2)
    # Today: one more lead, nothing matches it yet.
    arrive(0, stranger)
    queue_seed()
    queue_recover()

    rows = list(KpiRedRecoveryMetricsDaily.objects.order_by("metric_date"))
    assert rows[0].metric_date == day[6] and rows[-1].metric_date == today and len(rows) == 7
    previous_end = 0
    for row in rows:
        assert row.backlog_end == row.backlog_start + row.new_backlog_in - row.matched_out
        assert row.backlog_start == previous_end
        assert row.net_change == row.new_backlog_in - row.matched_out
        previous_end = row.backlog_end
    assert rows[-1].backlog_end == KpiRedBacklog.objects.count() == 3  # b2, c1, today's lead
    flows = {r.metric_date: (r.new_backlog_in, r.matched_out) for r in rows}
    assert flows[day[6]] == (2, 1)  # a1 linked the day it arrived
    assert flows[day[4]] == (2, 1)  # a2 linked once its driver registered
    assert flows[day[2]] == (1, 1)  # b1 claimed
    assert flows[today] == (1, 0)
    assert {a1.source_pk, a2.source_pk} == set(
        KpiRedRecoveryQueue.objects.filter(status="matched").values_list("lead_source_pk", flat=True))
    assert {b2.source_pk, c1.source_pk} <= backlog()


# --- 6. retry, reconcile, backfill, singletons ---------------------------------------------


def test_retry_creates_missing_links_and_origins_and_tracks_every_lead():
    _, no_identity = twin(days_ago=2)
    lonely = stranger(days_ago=30)
    person = make_person()
    no_origin = make_lead(days_ago=50)
    link_lead(no_origin, person)
    other = make_person()
    first, later = make_lead(days_ago=40), make_lead(days_ago=3)
    link_lead(first, other)
    link_lead(later, other)
    set_origin(other, later)  # not the earliest lead: inconsistent
    drivers_index_refresh()

    result = identity_matching_retry()

    assert result.processed == 5 and result.newly_linked == 1 and result.failed == 1
    assert result.origins_written == 2 and result.by_reason == {"NO_CANDIDATES": 1}
    assert IdentityLink.objects.filter(source_pk=no_identity.source_pk).exists()
    assert IdentityOrigin.objects.get(person=person).origin_source_id == no_origin.source_pk
    assert IdentityOrigin.objects.get(person=other).origin_source_id == first.source_pk
    jobs = dict(IdentityMatchingJob.objects.values_list("source_id", "status"))
    assert jobs == {no_identity.source_pk: "matched", lonely.source_pk: "failed", no_origin.source_pk: "matched",
                    first.source_pk: "matched", later.source_pk: "matched"}

    before = snapshot()
    again = identity_matching_retry()
    assert again.processed == 0 and again.skipped_not_due == 1 and snapshot() == before


def test_retry_filters_and_limit():
    twin(days_ago=2)
    stranger(days_ago=20)
    stranger(days_ago=100)
    drivers_index_refresh()
    assert identity_matching_retry(risk_level="low").processed == 1
    assert identity_matching_retry(gap_reason="no_origin").processed == 0
    result = identity_matching_retry(limit=1)
    assert result.processed == 1 and result.newly_linked == 1  # high risk first
    call_command("retry_identity_matching", "5", "--risk-level", "medium", "--json")
    assert IdentityMatchingJob.objects.count() == 3


def test_reconcile_links_maps_drivers_and_creates_expected_claims_once(tmp_csv):
    today = lima_today()
    # A recent lead with no identity whose driver reached 5 trips in the window.
    driver, fresh = twin(days_ago=10)
    make_trips(driver, start=today - timedelta(days=10), counts=[2, 2, 1])
    # A linked lead whose person has two drivers (27 trips in 14 days; the busier one is named),
    # and an imported paid claim for milestone 1.
    person = make_person()
    busy, quiet = make_driver(), make_driver()
    link_driver(busy, person)
    link_driver(quiet, person)
    paid = make_lead(days_ago=40)
    link_lead(paid, person)
    start = paid.lead_date
    make_trips(busy, start=start, counts=[10, 10])
    make_trips(quiet, start=start, counts=[5, 2])
    make_trips(quiet, {start + timedelta(days=14): 50})  # outside the window
    make_claim(paid, milestone=1, status="paid", driver_id=busy)
    # A lead whose person has no driver mapping left (NO_DRIVER): then the same human registers
    # as a driver in a second park, and the index refresh joins that record to the person.
    old_record = make_driver(document="43211234", park_id="park-lima-sur")
    drivers_index_refresh()
    mapped_person = IdentityLink.objects.get(source_table="drivers", source_pk=old_record.driver_id).person
    IdentityLink.objects.filter(source_table="drivers", source_pk=old_record.driver_id).delete()
    no_driver = make_lead(days_ago=70)
    link_lead(no_driver, mapped_person)
    lonely = stranger(days_ago=5)
    make_driver(document="43211234", park_id="park-lima-norte")

    result = pipeline_reconcile(refresh_index=True)

    assert result.index_refreshed and result.newly_linked == 1 and result.newly_driver_mapped == 1
    assert result.still_no_candidates == 1 and result.conflicts == 0 and result.errors == 0
    claims = {(c.lead_source_pk, c.milestone): c for c in Claim.objects.all()}
    assert set(claims) == {(fresh.source_pk, 1), (fresh.source_pk, 5), (paid.source_pk, 1), (paid.source_pk, 5),
                           (paid.source_pk, 25)}
    assert result.claims_created == 4
    assert claims[(paid.source_pk, 1)].status == "paid" and claims[(paid.source_pk, 1)].created_by == "import"
    expected = claims[(paid.source_pk, 25)]
    assert (expected.status, expected.created_by, expected.driver_id) == ("expected", "reconcile", busy.driver_id)
    assert expected.amount == Decimal(settings.CT4["MILESTONES"][25])
    assert claims[(fresh.source_pk, 5)].driver_id == driver.driver_id
    assert lonely.source_pk in backlog()

    before = snapshot()
    again = pipeline_reconcile(refresh_index=False)
    assert again.newly_linked == again.claims_created == again.newly_driver_mapped == 0
    assert again.skipped_not_due == 1 and snapshot() == before

    # The platform pays milestone 5: the import updates the expected row, never duplicates it,
    # and a later reconcile leaves the paid status alone.
    csv = tmp_csv("claims.csv", "lead_source_pk,driver_id,milestone,amount,status,claimed_at\n"
                                f"{paid.source_pk},{busy.driver_id},5,35.00,paid,2026-01-10 10:00\n")
    call_command("import_source", "claims", str(csv))
    assert Claim.objects.filter(lead_source_pk=paid.source_pk, milestone=5).get().status == "paid"
    assert pipeline_reconcile().claims_created == 0
    assert Claim.objects.get(lead_source_pk=paid.source_pk, milestone=5).status == "paid"
    assert Claim.objects.count() == 5


def test_reconcile_options_select_recent_and_limbo_leads():
    stranger(days_ago=3)
    stranger(days_ago=100)
    drivers_index_refresh()
    assert pipeline_reconcile(process_limbo=False).processed == 1
    assert pipeline_reconcile(process_recent=False, limbo_stages=["NO_DRIVER"]).processed == 0
    call_command("reconcile_cabinet_leads_pipeline", "--no-recent", "--limbo-stages", "NO_IDENTITY", "--json")
    assert IdentityMatchingJob.objects.count() == 2


def test_claims_create_expected_only_fills_missing_milestones():
    person, driver = make_person(), make_driver()
    link_driver(driver, person)
    lead = make_lead(days_ago=20)
    link_lead(lead, person)
    make_trips(driver, start=lead.lead_date, counts=[1])
    make_claim(lead, milestone=1, status="rejected")
    assert claims_create_expected(source_pks=[lead.source_pk]) == 0
    make_trips(driver, {lead.lead_date + timedelta(days=13): 4})
    assert claims_create_expected() == 1
    assert claims_create_expected() == 0
    assert Claim.objects.get(lead_source_pk=lead.source_pk, milestone=1).status == "rejected"


def test_backfill_writes_missing_and_not_earliest_origins_and_dry_run_writes_nothing():
    missing, wrong, fine = make_person(), make_person(), make_person()
    link_lead(make_lead(days_ago=5), missing)
    early, late = make_lead(days_ago=30), make_lead(days_ago=2)
    link_lead(early, wrong)
    link_lead(late, wrong)
    set_origin(wrong, late)
    ok = make_lead(days_ago=9)
    link_lead(ok, fine)
    set_origin(fine, ok)

    before = snapshot()
    dry = origins_backfill(dry_run=True)
    assert (dry.persons, dry.missing_origin, dry.not_earliest, dry.origins_written) == (2, 1, 1, 2)
    assert snapshot() == before

    result = origins_backfill()
    assert result.origins_written == 2
    assert IdentityOrigin.objects.get(person=wrong).origin_source_id == early.source_pk
    assert IdentityOrigin.objects.filter(person=missing).exists()

    before = snapshot()
    assert origins_backfill().persons == 0 and snapshot() == before


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
        env = {**os.environ, "DATABASE_URL": _database_url()}
        env.pop("CT4_DB_NAME", None)
        seed = subprocess.run([sys.executable, "manage.py", "seed_kpi_red_queue"], cwd=settings.BASE_DIR, env=env,
                              capture_output=True, text=True, timeout=60)
        assert seed.returncode == 3 and "already running" in seed.stderr
        recover = _recover_process()
        out, err = recover.communicate(timeout=60)
        assert recover.returncode == 0, err[-2000:]
    finally:
        _release(holder)
        _release(recover_holder)


def test_a_matcher_failure_fails_its_batch_with_error_and_logs_no_personal_data(monkeypatch, caplog):
    lead = stranger(days_ago=2, phone="951234876")
    make_driver()
    drivers_index_refresh()
    queue_seed()

    def broken(**kwargs):
        raise ValueError("cannot parse phone 951234876")

    monkeypatch.setattr("recovery.jobs.recover.leads_resolve", broken)
    logging.getLogger("ct4.jobs").addHandler(caplog.handler)
    result = queue_recover()

    row = queue_rows()[lead.source_pk]
    assert (row.status, row.fail_reason, row.attempts) == ("failed", "ERROR", 1)
    assert result.by_reason == {"ERROR": 1}
    assert IdentityMatchingJob.objects.get(source_id=lead.source_pk).fail_reason == "ERROR"
    assert JobRun.objects.get(name="recover_kpi_red_leads").status == "succeeded"
    assert "951234876" not in caplog.text and "ValueError" in caplog.text


def test_claims_walk_the_queue_once_even_with_equal_and_missing_lead_times():
    make_driver()
    drivers_index_refresh()
    same_time = timezone.now() - timedelta(days=2)
    leads = [stranger(created_at=same_time) for _ in range(3)] + [stranger(days_ago=d) for d in (1, 5)]
    queue_seed()
    # Rows queued before the lead time was copied into the queue have none.
    legacy = [stranger(days_ago=9), stranger(days_ago=3)]
    for lead in legacy:
        KpiRedRecoveryQueue.objects.create(lead_source_pk=lead.source_pk, status="pending")

    result = queue_recover(batch_size=1)

    assert result.processed == result.batches == 7
    assert set(KpiRedRecoveryQueue.objects.values_list("attempts", flat=True)) == {1}
    assert {lead.source_pk for lead in leads + legacy} == set(queue_rows())
