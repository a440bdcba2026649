"""Recovery test data that looks like a Lima park's (backlog leads, twins of drivers, doubtful leads for
the review screens), snapshots of what the jobs write, and the jobs run as real processes."""

import itertools
import os
import subprocess
import sys
from datetime import timedelta
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.utils import timezone

from identity.models import CabinetLead, IdentityLink
from identity.tests.factories import lima_datetime, lima_today, make_driver, make_lead
from recovery.jobs.recover import queue_recover
from recovery.models import KpiRedRecoveryQueue
from recovery.queue import queue_seed
from recovery.review.listing import review_queue
from recovery.review.rules import REVIEWER_GROUP
from recovery.sql_views import KpiRedBacklog, KpiRedRecoveryMetricsDaily

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
    "claims": "SELECT xmin::text, lead_source_pk, milestone, status, amount, driver_id "
              "FROM public.cabinet_milestone_claims",
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


# --- running the jobs in real processes -----------------------------------------------------


def job_database_url() -> str:
    db = connection.settings_dict
    user = quote(db["USER"] or "postgres")
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    # A socket directory is HOST, or (DATABASE_URL=postgresql://...@/db?host=/dir) OPTIONS' host.
    host = db["HOST"] or db["OPTIONS"].get("host") or ""
    if not host or host.startswith("/"):
        return f"postgresql://{user}{password}@/{db['NAME']}?host={quote(host or '/tmp')}"
    return f"postgresql://{user}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def recover_process(*extra: str, sleep: float = 0) -> subprocess.Popen:
    """recover_kpi_red_leads as cron starts it, in batches of 500 (the tests count batches of 500)."""
    env = {**os.environ, "DATABASE_URL": job_database_url(), "CT4_TEST_SLEEP_IN_BATCH": str(sleep)}
    env.pop("CT4_DB_NAME", None)
    return subprocess.Popen(
        [sys.executable, "manage.py", "recover_kpi_red_leads", "--json", "--batch-size", "500", *extra],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def assert_nothing_half_written() -> None:
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


# --- doubtful leads for the review screens ---------------------------------------------------

_review_n = itertools.count(1)
REVIEW_GIVEN = ("Wilmer", "Yessenia", "Teófilo", "Maritza", "Edgar", "Nélida", "Abdón", "Filomena")
RARE = ("Ccahuana", "Huillca", "Quillahuamán", "Ccorimanya", "Añamuro", "Callañaupa", "Chambilla", "Soncco",
        "Tintaya", "Arotinco", "Cjuro", "Achahui", "Pumacahua", "Sullca", "Huaylla", "Chuquimia")


def _blank(**fields) -> dict:
    """Only what is given: every other identifier empty, so nothing else agrees by accident."""
    return {"email": None, "birth_date": None, "plate": None, "document": None, "phone": None, **fields}


def conflict(*, days_ago: int = 2, park: str = "park-lima-norte", external_id: str | None = None):
    """Two drivers (two persons: different DNIs, two parks) with the lead's full name and a shared
    mobile: both strong, neither ahead. Returns (lead, driver_a, driver_b)."""
    n = next(_review_n)
    name = {"first_name": REVIEW_GIVEN[n % len(REVIEW_GIVEN)],
            "last_name": f"{RARE[n % 16]} {RARE[(n * 5 + 3) % 16]}"}
    phone = f"94{n:07d}"
    a = make_driver(**_blank(**name, phone=phone, document=f"{41_000_000 + n:08d}"), license_number=None,
                    park_id="park-lima-norte")
    b = make_driver(**_blank(**name, phone=phone, document=f"{42_000_000 + n:08d}"), license_number=None,
                    park_id="park-lima-sur")
    lead = make_lead(days_ago=days_ago, park_id=park, external_id=external_id, **_blank(**name, phone=phone))
    return lead, a, b


def weak(*, days_ago: int = 3, park: str = "park-lima-norte"):
    """A lead whose mobile a driver of another name carries (a recycled number): WEAK_MATCH_ONLY."""
    n = next(_review_n)
    phone = f"93{n:07d}"
    driver = make_driver(**_blank(first_name="Rosa", last_name="Flores Huamán", phone=phone,
                                document=f"{43_000_000 + n:08d}"), license_number=None)
    lead = make_lead(days_ago=days_ago, park_id=park, **_blank(first_name="Pedro", last_name="Ramos Soto", phone=phone))
    return lead, driver


def person_of(driver) -> str:
    return str(IdentityLink.objects.get(source_table="drivers", source_pk=driver.driver_id).person_id)


def recover() -> None:
    """The jobs as scheduled: seed the queue from the backlog, then recover."""
    queue_seed()
    queue_recover()


def make_due() -> None:
    """Time passes: every failed queue row's backoff is over."""
    KpiRedRecoveryQueue.objects.filter(status="failed").update(next_attempt_at=timezone.now() - timedelta(hours=1))


def listed() -> list[str]:
    return [row.source_pk for row in review_queue(limit=500).rows]


def matched_out_today() -> int:
    return KpiRedRecoveryMetricsDaily.objects.get(metric_date=lima_today()).matched_out


def reviewer(username: str):
    user = get_user_model().objects.create_user(username, password="lima-review-2026", is_staff=True)
    user.groups.add(Group.objects.get(name=REVIEWER_GROUP))
    return user
