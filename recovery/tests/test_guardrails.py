"""The guardrails pass on a clean pipeline and fail, exit 1, naming the offender, on each planted leak."""

import json
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.state import ProjectState
from django.utils import timezone

from identity.index import drivers_index_refresh
from identity.models import LEADS_TABLE, CabinetLead, IdentityLink, IdentityOrigin, IdentityUnmatched, JobRun, Person
from identity.resolution import leads_match
from identity.tests.factories import link_driver, link_lead, make_claim, make_driver, make_lead, make_person, set_origin
from recovery import guardrails
from recovery.models import IdentityMatchingJob, KpiRedRecoveryQueue

pytestmark = pytest.mark.django_db


# --- a small park, matched the way the product matches ----------------------------------


@dataclass
class Park:
    lead_old: CabinetLead  # Juan Carlos, first lead: his person's origin
    lead_new: CabinetLead  # Juan Carlos again, later, with an external_id
    lead_rosa: CabinetLead
    lead_nomatch: CabinetLead  # has an external_id, matches nobody
    lead_bare: CabinetLead  # no identifiers at all
    lead_claimed: CabinetLead  # unlinked but claimed: not in the red backlog
    juan: Person
    rosa: Person

    @property
    def leads(self) -> list[CabinetLead]:
        return [self.lead_old, self.lead_new, self.lead_rosa, self.lead_nomatch, self.lead_bare, self.lead_claimed]


def clean_park(*, match: bool = True, track: bool = True) -> Park:
    """Drivers, leads, index refresh and (with `match`) matching; with `track`, the queue and jobs rows a
    recovery run leaves. Without `match` the leads wait in the red backlog for the real jobs."""
    make_driver(driver_id="D-JUAN", first_name="Juan Carlos", last_name="Quispe Mamani", phone="987123456",
                document="44556677", email=None, birth_date="1990-05-17")
    make_driver(driver_id="D-ROSA", first_name="Rosa", last_name="Flores Huamán", phone="912300400",
                document="40112233", email=None)
    make_driver(driver_id="D-LUCIA", first_name="Lucía", last_name="Ñahui Condori", phone="956781234",
                document="41223344", email=None)
    drivers_index_refresh()
    no_extra = {"email": None, "birth_date": None}
    park = Park(
        lead_old=make_lead(id=900001, first_name="Juan Carlos", last_name="Quispe Mamani", phone="987 123 456",
                           document="44556677", days_ago=20, **no_extra),
        lead_new=make_lead(id=900002, external_id="CAB-2026-000102", first_name="Juan Carlos",
                           last_name="Quispe Mamani", phone="+51 987 123 456", days_ago=2, **no_extra),
        lead_rosa=make_lead(id=900003, external_id="CAB-2026-000103", first_name="Rosa", last_name="Flores Huamán",
                            phone="912300400", document="40112233", days_ago=30, **no_extra),
        lead_nomatch=make_lead(id=900004, external_id="CAB-2026-000104", first_name="Pedro",
                               last_name="Ramos Soto", phone="923456780", document="47001122", days_ago=5, **no_extra),
        lead_bare=make_lead(id=900005, first_name="Pedro", last_name=None, phone=None, document=None, days_ago=1,
                            **no_extra),
        lead_claimed=make_lead(id=900006, first_name="Inés", last_name="Chávez Gutiérrez", phone="934567812",
                               document="45678123", days_ago=10, **no_extra),
        juan=None, rosa=None,
    )
    make_claim(park.lead_claimed, milestone=1, status="claimed")
    if not match:
        return park
    leads_match()
    persons = dict(IdentityLink.objects.filter(source_table=LEADS_TABLE).values_list("source_pk", "person_id"))
    park.juan = Person.objects.get(pk=persons[park.lead_old.source_pk])
    park.rosa = Person.objects.get(pk=persons[park.lead_rosa.source_pk])
    if track:
        plant_tracking(park)
    return park


def plant_tracking(park: Park) -> None:
    """The queue and jobs rows seed + recover would leave: matched with the link's person, else failed."""
    now = timezone.now()
    persons = dict(IdentityLink.objects.filter(source_table=LEADS_TABLE).values_list("source_pk", "person_id"))
    reasons = dict(IdentityUnmatched.objects.values_list("source_pk", "reason_code"))
    for minutes, lead in enumerate(park.leads):
        person = persons.get(lead.source_pk)
        status = "matched" if person else "failed"
        fields = dict(status=status, fail_reason=None if person else reasons[lead.source_pk],
                      matched_person_id=person, last_attempt_at=now - timedelta(minutes=minutes))
        IdentityMatchingJob.objects.create(source_id=lead.source_pk, attempt_count=1, **fields)
        if lead != park.lead_claimed:  # the claimed lead never was in the red backlog
            KpiRedRecoveryQueue.objects.create(
                lead_source_pk=lead.source_pk, attempts=1, lead_created_at=lead.created_at,
                matched_at=now - timedelta(minutes=minutes) if person else None, **fields)


@pytest.fixture
def park() -> Park:
    return clean_park()


def run(command: str, *args: str) -> tuple[int, str]:
    """Call a command; its exit status (0 unless SystemExit) and what it printed."""
    out = StringIO()
    try:
        call_command(command, *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


CHECK_COMMANDS = [
    "verify_source_pk_consistency",
    "verify_kpi_red_drain",
    "verify_identity_origin_creation",
    "check_origin_missing",
    "check_identity_links_origins",
    "check_migrations",
]


# --- clean ------------------------------------------------------------------------------


def test_the_park_is_what_the_tests_assume(park):
    linked = set(IdentityLink.objects.filter(source_table=LEADS_TABLE).values_list("source_pk", flat=True))
    assert linked == {park.lead_old.source_pk, park.lead_new.source_pk, park.lead_rosa.source_pk}
    assert IdentityOrigin.objects.get(person=park.juan).origin_source_id == park.lead_old.source_pk == "900001"
    assert KpiRedRecoveryQueue.objects.filter(status="matched").count() == 3
    assert KpiRedRecoveryQueue.objects.filter(status="failed").count() == 2


@pytest.mark.parametrize("command", CHECK_COMMANDS)
def test_each_guardrail_passes_on_a_clean_pipeline(park, command):
    code, out = run(command)

    assert code == 0, out
    assert out.startswith(f"[OK] {command}:")


def test_run_guardrails_passes_and_records_a_job_run(park):
    code, out = run("run_guardrails")

    assert code == 0, out
    assert out.count("[OK]") == len(CHECK_COMMANDS) and "[FAIL]" not in out
    run_row = JobRun.objects.get(name="guardrails")
    assert run_row.status == "succeeded"
    assert run_row.counts == {**{name: 0 for name in CHECK_COMMANDS}, "checks": 6, "checks_failed": 0}


def test_drain_figures_on_a_clean_pipeline(park):
    result = guardrails.kpi_red_drain_verify(n=2)

    assert result.ok
    assert (result.details["matched_checked"], result.details["matched_total"]) == (2, 3)
    assert result.details["leaked_total"] == 0 and result.details["error_rate_pct"] == 0
    assert "matched leads checked (last 2): 2" in result.render()


# --- planted leaks ----------------------------------------------------------------------


def leak_matched_row_still_in_backlog(park):
    KpiRedRecoveryQueue.objects.filter(lead_source_pk=park.lead_nomatch.source_pk).update(
        status="matched", fail_reason=None, matched_person=park.rosa, matched_at=timezone.now())
    return park.lead_nomatch.source_pk


def leak_link_on_the_leads_id(park):
    # The classic wrong cast: id::text for a lead whose source_pk is its external_id.
    link_lead(str(park.lead_nomatch.id), park.rosa)
    return str(park.lead_nomatch.id)


def leak_queue_row_of_no_lead(park):
    KpiRedRecoveryQueue.objects.create(lead_source_pk="CAB-2099-999999")
    return "CAB-2099-999999"


def leak_person_without_origin(park):
    IdentityOrigin.objects.filter(person=park.rosa).delete()
    return str(park.rosa.person_key)


def leak_lead_link_without_origin(park):
    # Rosa has one lead, linked and matched: her origin gone, that lead is the offender.
    leak_person_without_origin(park)
    return park.lead_rosa.source_pk


def leak_origin_naming_a_later_lead(park):
    set_origin(park.juan, park.lead_new)
    return str(park.juan.person_key)


def leak_orphan_origin(park):
    stranger = make_person()
    set_origin(stranger, park.lead_nomatch)
    return str(stranger.person_key)


def leak_matched_job_without_link(park):
    IdentityMatchingJob.objects.filter(source_id=park.lead_bare.source_pk).update(
        status="matched", fail_reason=None, matched_person=park.rosa)
    return park.lead_bare.source_pk


def leak_unlinked_driver_dropped_from_the_list(park):
    # canon.drivers_unlinked drifts (a hand-made DELETE): the unlinked-activity view would miss him.
    driver = make_driver()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM canon.drivers_unlinked WHERE driver_id = %s", [driver.driver_id])
    return driver.driver_id


def leak_linked_driver_left_on_the_list(park):
    driver = make_driver()
    link_driver(driver, park.rosa)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO canon.drivers_unlinked (driver_id) VALUES (%s)", [driver.driver_id])
    return driver.driver_id


def leak_wrong_trips_figure(park):
    # ops.lead_window_14d drifts (a hand-made UPDATE): the money, limbo and funnel views would show it.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE ops.lead_window_14d SET trips_14d = trips_14d + 25 WHERE lead_source_pk = %s",
                       [park.lead_rosa.source_pk])
    return park.lead_rosa.source_pk


def leak_linked_lead_dropped_from_the_window_table(park):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ops.lead_window_14d WHERE lead_source_pk = %s", [park.lead_new.source_pk])
    return park.lead_new.source_pk


def leak_window_row_for_an_unlinked_lead(park):
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO ops.lead_window_14d (lead_source_pk, person_key, driver_ids, trips_14d, "
                       "claimed_milestones) VALUES (%s, %s, '{D-ROSA}', 3, '{}')",
                       [park.lead_nomatch.source_pk, park.rosa.person_key])
    return park.lead_nomatch.source_pk


LEAKS = [
    ("verify_kpi_red_drain", leak_matched_row_still_in_backlog, "queue_matched_in_backlog"),
    ("verify_source_pk_consistency", leak_link_on_the_leads_id, "identity_links:wrong_cast"),
    ("verify_source_pk_consistency", leak_queue_row_of_no_lead, "queue:unknown"),
    ("verify_identity_origin_creation", leak_person_without_origin, "person_without_origin"),
    ("verify_identity_origin_creation", leak_origin_naming_a_later_lead, "origin_not_earliest"),
    ("check_origin_missing", leak_orphan_origin, "origin_orphan"),
    ("check_origin_missing", leak_lead_link_without_origin, "matched_without_origin"),
    ("check_identity_links_origins", leak_lead_link_without_origin, "lead_link_without_origin"),
    ("check_identity_links_origins", leak_matched_job_without_link, "matched_job_without_link"),
    ("check_identity_links_origins", leak_matched_row_still_in_backlog, "matched_queue_without_link"),
    ("check_identity_links_origins", leak_unlinked_driver_dropped_from_the_list, "unlinked_driver_not_listed"),
    ("check_identity_links_origins", leak_linked_driver_left_on_the_list, "listed_driver_not_unlinked"),
    ("check_identity_links_origins", leak_wrong_trips_figure, "lead_window_wrong"),
    ("check_identity_links_origins", leak_linked_lead_dropped_from_the_window_table, "lead_window_missing"),
    ("check_identity_links_origins", leak_window_row_for_an_unlinked_lead, "lead_window_stray"),
]


@pytest.mark.parametrize(("command", "plant", "category"), LEAKS, ids=[f"{c}-{p.__name__}" for c, p, _ in LEAKS])
def test_each_guardrail_fails_on_a_planted_leak(park, command, plant, category):
    offender = plant(park)

    code, out = run(command)

    assert code == 1
    assert out.startswith(f"[FAIL] {command}:")
    assert offender in out
    code, out = run(command, "--json")
    result = json.loads(out)
    assert code == 1 and result["ok"] is False
    assert result["details"]["counts"][category] == 1 == result["offenders_total"]
    assert result["offenders"] == [offender]


def test_wrong_cast_names_the_leads_real_source_pk(park):
    leak_link_on_the_leads_id(park)

    result = guardrails.source_pk_consistency_verify()

    assert result.details["samples"]["identity_links:wrong_cast"] == [
        "900004 (id of the lead whose source_pk is CAB-2026-000104)"]
    assert "canon.identity_links.source_pk: 1 wrong cast, 0 matching no lead" in result.render()


def test_matched_no_link_is_the_runbook_query(park):
    assert guardrails.identity_links_origins_check().details["runbook_matched_no_link"] == 0
    leak_matched_job_without_link(park)

    result = guardrails.identity_links_origins_check()

    assert result.details["runbook_matched_no_link"] == result.details["counts"]["matched_job_without_link"] == 1


def test_links_check_plans_set_comparisons_without_nested_loops_and_the_window_with_them(park):
    # The lead-window comparison calls ops.person_window_trips once per linked lead: without nested
    # loops each call scanned every driver link (at a million drivers the check never finished).
    # The set comparisons keep hash joins, safe from statistics a big run leaves stale.
    seen: list[tuple[str, str]] = []

    def record(execute, sql, params, many, context):
        (setting,) = context["connection"].connection.execute("SHOW enable_nestloop").fetchone()
        seen.append((sql, setting))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        result = guardrails.identity_links_origins_check()

    assert result.ok
    window = [setting for sql, setting in seen if "person_window_trips" in sql]
    sets = [setting for sql, setting in seen if "unlinked_driver_not_listed" in sql]
    assert window == ["on"]
    assert sets == ["off"]


def test_drain_counts_every_matched_row_not_only_the_newest(park):
    # The leak is the oldest matched row: outside --n 1, still caught by the full count.
    KpiRedRecoveryQueue.objects.filter(lead_source_pk=park.lead_nomatch.source_pk).update(
        status="matched", fail_reason=None, matched_person=park.rosa, matched_at=timezone.now() - timedelta(days=3))

    result = guardrails.kpi_red_drain_verify(n=1)

    assert not result.ok
    assert (result.details["matched_checked"], result.details["leaked"]) == (1, 0)
    assert (result.details["matched_total"], result.details["leaked_total"]) == (4, 1)


def test_offenders_are_capped_but_counted_in_full(park):
    leads = CabinetLead.objects.bulk_create(
        [CabinetLead(id=800000 + i, created_at=timezone.now(), first_name="Rocío", last_name="Mamani Quispe")
         for i in range(60)])
    KpiRedRecoveryQueue.objects.bulk_create(
        [KpiRedRecoveryQueue(lead_source_pk=str(lead.id), status="matched", matched_person=park.rosa,
                             matched_at=timezone.now()) for lead in leads])

    result = guardrails.kpi_red_drain_verify()

    assert result.details["leaked_total"] == 60 == result.offenders_total
    assert len(result.offenders) == guardrails.OFFENDERS_SHOWN == 50
    assert "(50 of 60 shown)" in result.render()
    assert (result.details["matched_checked"], result.details["leaked"]) == (63, 60)


def test_failures_show_identifiers_only_never_personal_data(park):
    for plant in {p for _, p, _ in LEAKS}:
        plant(park)

    results = guardrails.guardrails_run_all()
    text = guardrails.results_output(results, as_json=False) + guardrails.results_output(results, as_json=True)

    assert sum(not r.ok for r in results) == 5
    for lead in park.leads:
        for value in (lead.phone, lead.document, lead.email, lead.first_name, lead.last_name):
            assert not value or value not in text


def test_run_guardrails_fails_and_records_which_checks_failed(park):
    leak_orphan_origin(park)

    code, out = run("run_guardrails")

    assert code == 1
    assert "[FAIL] check_origin_missing" in out and "FAILED: check_origin_missing" in out
    run_row = JobRun.objects.get(name="guardrails")
    assert run_row.status == "failed" and "check_origin_missing" in run_row.error
    assert run_row.counts["check_origin_missing"] == 1 and run_row.counts["checks_failed"] == 1


# --- migrations ---------------------------------------------------------------------------


def test_check_migrations_passes_on_the_project():
    result = guardrails.migrations_check()

    assert result.ok, result.render()
    assert "identity." in result.lines[0] and "recovery." in result.lines[0]


class RivalLeafLoader(MigrationLoader):
    """The real graph plus a migration branching off recovery's first one: two recovery leaves."""

    def build_graph(self):
        super().build_graph()
        rival = Migration("0002_rival_branch", "recovery")
        rival.dependencies = [("recovery", "0001_initial")]
        self.graph.add_node(("recovery", "0002_rival_branch"), rival)
        self.graph.add_dependency(rival, ("recovery", "0002_rival_branch"), ("recovery", "0001_initial"))


def test_check_migrations_fails_on_two_leaves(monkeypatch):
    monkeypatch.setattr(guardrails, "MigrationLoader", RivalLeafLoader)

    code, out = run("check_migrations")

    assert code == 1
    assert "apps with more than one leaf migration: 1" in out
    assert "recovery: 0002_rival_branch, " in out
    # The rival branch was never applied either.
    assert "recovery.0002_rival_branch" in out


def test_check_migrations_fails_on_a_model_change_without_migration(monkeypatch):
    # The models' state as if a field had been added to the queue model and no migration written.
    changed = ProjectState.from_apps(django_apps)
    changed.models[("recovery", "kpiredrecoveryqueue")].fields["review_note"] = models.TextField(default="")
    monkeypatch.setattr(guardrails.ProjectState, "from_apps", classmethod(lambda cls, apps: changed))

    result = guardrails.migrations_check()

    assert not result.ok
    assert result.details["counts"]["model_changes"] == 1
    assert result.offenders == ["recovery: Add field review_note to kpiredrecoveryqueue"]
