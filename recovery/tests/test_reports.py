"""validate_kpi_red_impact (backlog before / seed / recover / after) and diagnose_identity_gap on a small park."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from identity.models import JobRun
from recovery import guardrails, reports
from recovery.models import KpiRedRecoveryQueue
from recovery.sql_views import IdentityGapAnalysis, KpiRedBacklog
from recovery.tests.test_guardrails import clean_park

pytestmark = pytest.mark.django_db


def command_output(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- validate_kpi_red_impact ---------------------------------------------------------


def test_impact_seeds_recovers_and_reports_the_delta_and_reasons():
    park = clean_park(match=False)
    assert KpiRedBacklog.objects.count() == 5  # every lead but the claimed one

    out = command_output("validate_kpi_red_impact", "--limit", "100")

    assert "BACKLOG BEFORE: 5\nBACKLOG AFTER: 2\nDelta: 3 (5 - 2)" in out
    assert "NO_CANDIDATES" in out and "MISSING_IDENTIFIERS" in out
    left = set(KpiRedBacklog.objects.values_list("lead_source_pk", flat=True))
    assert left == {park.lead_nomatch.source_pk, park.lead_bare.source_pk}
    assert dict(KpiRedRecoveryQueue.objects.values_list("lead_source_pk", "status")) == {
        park.lead_old.source_pk: "matched", park.lead_new.source_pk: "matched", park.lead_rosa.source_pk: "matched",
        park.lead_nomatch.source_pk: "failed", park.lead_bare.source_pk: "failed",
    }
    assert all(check.ok for check in guardrails.guardrails_run_all())


def test_impact_as_json_and_a_second_run_changes_nothing():
    clean_park(match=False)
    first = json.loads(command_output("validate_kpi_red_impact", "--limit", "100", "--json"))

    second = json.loads(command_output("validate_kpi_red_impact", "--limit", "100", "--json"))

    assert (first["backlog_before"], first["backlog_after"], first["delta"]) == (5, 2, 3)
    assert (first["matched_this_run"], first["failed_this_run"]) == (3, 2)
    assert first["failed_by_reason"] == {"NO_CANDIDATES": 1, "MISSING_IDENTIFIERS": 1}
    assert first["queue_now"] == {"matched": 3, "failed": 2}
    # Failed rows wait for their backoff (or a drivers index change): nothing to retry yet.
    assert (second["backlog_before"], second["backlog_after"], second["delta"]) == (2, 2, 0)
    assert second["matched_this_run"] == second["failed_this_run"] == 0
    assert second["queue_failed_by_reason"] == {"MISSING_IDENTIFIERS": 1, "NO_CANDIDATES": 1}


def test_impact_limit_must_be_positive():
    with pytest.raises(CommandError, match="positive"):
        call_command("validate_kpi_red_impact", "--limit", "0")


# --- diagnose_identity_gap ---------------------------------------------------------------


@pytest.fixture
def park():
    return clean_park()


def test_diagnosis_gap_and_red_kpi_agree_with_the_views(park):
    report = reports.gap_diagnose()

    gap = report["gap"]
    assert gap["total_leads"] == IdentityGapAnalysis.objects.count() == 6
    assert gap["by_reason"] == {"no_identity": 3, "resolved": 3}
    assert gap["pct_unresolved"] == 50.0
    assert sum(cell["leads"] for cell in gap["by_reason_risk"]) == 6
    red = report["red_kpi"]
    assert red["backlog"] == KpiRedBacklog.objects.count() == 2 and red["by_risk"] == {"high": 2}
    assert len(red["last_7_days"]) == 7 and red["last_7_days"][-1]["backlog_end"] == 2
    assert report["fail_reasons"] == {
        "queue": {"NO_CANDIDATES": 1, "MISSING_IDENTIFIERS": 1},
        "identity_unmatched": {"NO_CANDIDATES": 2, "MISSING_IDENTIFIERS": 1},
    }
    assert report["matched_last_24h"] == {"matched_last_24h": 3, "unique_persons_matched": 2}
    assert [(c["name"], c["ok"]) for c in report["integrity"]] == [
        ("check_identity_links_origins", True), ("check_origin_missing", True),
        ("verify_identity_origin_creation", True)]


def test_diagnosis_freshness_badges_and_volume(park):
    old = timezone.now() - timedelta(hours=30)
    JobRun.objects.create(name="retry_identity_matching", status="succeeded", started_at=old, finished_at=old,
                          counts={"processed": 40, "matched": 7})
    # A recent failure after an old success is still STALE.
    JobRun.objects.create(name="reconcile_cabinet_leads_pipeline", status="succeeded", started_at=old,
                          finished_at=old)
    JobRun.objects.create(name="reconcile_cabinet_leads_pipeline", status="failed", finished_at=timezone.now(),
                          error="OperationalError: server closed the connection")

    report = reports.gap_diagnose()

    badges = {job["name"]: job["badge"] for job in report["freshness"]["jobs"]}
    assert badges == {
        "refresh_drivers_index": "OK", "match_leads": "OK", "seed_kpi_red_queue": "NEVER",
        "recover_kpi_red_leads": "NEVER", "retry_identity_matching": "STALE",
        "reconcile_cabinet_leads_pipeline": "STALE", "guardrails": "NEVER", "rules_precision": "NEVER",
    }
    volume = {row["name"]: row for row in report["volume"]}
    assert (volume["match_leads"]["processed_24h"], volume["match_leads"]["matched_24h"]) == (6, 3)
    retry = volume["retry_identity_matching"]
    assert (retry["runs_24h"], retry["runs_7d"], retry["processed_7d"], retry["matched_7d"]) == (0, 1, 40, 7)


def test_diagnosis_reports_broken_integrity(park):
    KpiRedRecoveryQueue.objects.filter(lead_source_pk=park.lead_bare.source_pk).update(
        status="matched", fail_reason=None, matched_person=park.rosa, matched_at=timezone.now())

    report = reports.gap_diagnose()

    links = next(c for c in report["integrity"] if c["name"] == "check_identity_links_origins")
    assert not links["ok"] and links["offenders"] == [park.lead_bare.source_pk]
    assert f"e.g. {park.lead_bare.source_pk}" in reports.gap_render(report)


def test_diagnose_command_prints_every_section_and_no_personal_data(park):
    out = command_output("diagnose_identity_gap")

    for title in ("1. Gap: 3 of 6 leads unresolved (50.0%)", "2. Job freshness", "[OK   ] refresh_drivers_index",
                  "3. Matched last 24 h: 3 leads, 2 unique persons", "4. Top fail reasons", "5. Volume processed",
                  "6. Link / origin integrity", "7. Red KPI now: 2 leads"):
        assert title in out
    for lead in park.leads:
        for value in (lead.phone, lead.document, lead.last_name):
            assert not value or value not in out
    data = json.loads(command_output("diagnose_identity_gap", "--json"))
    assert data["gap"]["unresolved"] == 3 and data["red_kpi"]["backlog"] == 2
