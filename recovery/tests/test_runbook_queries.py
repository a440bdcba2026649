"""Every SQL query of the operators' runbooks (../shared/seeds) runs verbatim on a matched park and agrees with it.

The limbo, weekly-audit and today-vs-yesterday queries are copied in test_sql_views.py (checked there on hand-made
data); here they run again on the pipeline's data, and a last test proves no runbook query is left out.
"""

import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from identity.models import LEADS_TABLE, CabinetLead, IdentityLink, IdentityUnmatched
from identity.tests.factories import lima_today, make_person
from recovery import guardrails, reports
from recovery.models import IdentityMatchingJob
from recovery.sql_views import CabinetLeadsLimbo, IdentityGapAnalysis, KpiRedBacklog
from recovery.tests import test_sql_views
from recovery.tests.test_guardrails import clean_park

pytestmark = pytest.mark.django_db

SEEDS = Path(settings.BASE_DIR).parent / "shared" / "seeds"

# 000_ba7f075c2c0063ae.txt (KPI Red Recovery): the source_pk expression, verbatim inside a query.
SOURCE_PK_EXPRESSION = """COALESCE(external_id::text, id::text)
"""

# 002_ab125b5c50d93d62.txt (Identity Gap Recovery runbook): freshness.
RUNBOOK_FRESHNESS = """-- Verificar último run del job
SELECT
    MAX(last_attempt_at) as last_run,
    COUNT(*) FILTER (WHERE last_attempt_at >= NOW() - INTERVAL '24 hours') as jobs_last_24h,
    COUNT(*) FILTER (WHERE status = 'matched' AND last_attempt_at >= NOW() - INTERVAL '24 hours') as matched_last_24h
FROM ops.identity_matching_jobs;
"""

# 002_ab125b5c50d93d62.txt: matched in the last 24 h.
RUNBOOK_MATCHED_LAST_24H = """SELECT
    COUNT(*) as matched_last_24h,
    COUNT(DISTINCT matched_person_key) as unique_persons_matched
FROM ops.identity_matching_jobs
WHERE status = 'matched'
  AND last_attempt_at >= NOW() - INTERVAL '24 hours';
"""

# 002_ab125b5c50d93d62.txt: troubleshooting "job creates jobs but no identity_links".
RUNBOOK_MATCHED_NO_LINK = """SELECT COUNT(*) as matched_no_link
FROM ops.identity_matching_jobs j
WHERE j.status = 'matched'
  AND NOT EXISTS (
      SELECT 1
      FROM canon.identity_links il
      WHERE il.source_table = 'module_ct_cabinet_leads'
        AND il.source_pk = j.source_id
  );
"""

# 002_ab125b5c50d93d62.txt: troubleshooting "gap does not drop", step 4 (inline in the text).
RUNBOOK_GAP_UNRESOLVED = """SELECT COUNT(*) FROM ops.v_identity_gap_analysis WHERE gap_reason != 'resolved'"""

# 003_e0074dcac2219937.txt (Reconcile Cabinet Leads Pipeline): why limbo_no_identity does not drop.
RUNBOOK_UNMATCHED_REASONS = """SELECT reason_code, COUNT(*)
FROM canon.identity_unmatched
WHERE source_table = 'module_ct_cabinet_leads'
    AND snapshot_date > CURRENT_DATE - INTERVAL '7 days'
GROUP BY reason_code;
"""

# Copied verbatim in test_sql_views.py (002 today-vs-yesterday; 003 limbo, weekly audit, post-05).
RUNBOOK_FROM_TEST_VIEWS = {
    name: getattr(test_sql_views, name)
    for name in ("RUNBOOK_LIMBO_DISTRIBUTION", "RUNBOOK_WEEKLY_AUDIT", "RUNBOOK_POST_05_COUNT",
                 "RUNBOOK_POST_05_DISTRIBUTION", "RUNBOOK_UNRESOLVED_TODAY_VS_YESTERDAY")
}


def sql_rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


@pytest.fixture
def park():
    park = clean_park()
    # One attempt outside the 24 h window, and one unmatched row older than the 7-day window.
    old = CabinetLead.objects.create(id=900100, external_id="CAB-2025-000100", created_at=timezone.now()
                                     - timedelta(days=60), first_name="Sofía", last_name="Huamán Rodríguez")
    IdentityMatchingJob.objects.create(source_id=old.source_pk, status="failed", fail_reason="NO_CANDIDATES",
                                       attempt_count=3, last_attempt_at=timezone.now() - timedelta(hours=30))
    IdentityUnmatched.objects.create(source_table=LEADS_TABLE, source_pk=old.source_pk, reason_code="NO_CANDIDATES",
                                     snapshot_date=lima_today() - timedelta(days=30))
    return park


def test_source_pk_expression_is_the_generated_column_and_the_backlog_key(park):
    rows = sql_rows(f"SELECT id, {SOURCE_PK_EXPRESSION} FROM public.module_ct_cabinet_leads")

    assert dict(rows) == dict(CabinetLead.objects.values_list("id", "source_pk"))
    assert set(KpiRedBacklog.objects.values_list("lead_source_pk", flat=True)) <= {pk for _, pk in rows}


def test_freshness_query(park):
    ((last_run, jobs_24h, matched_24h),) = sql_rows(RUNBOOK_FRESHNESS)

    jobs = IdentityMatchingJob.objects.all()
    recent = [j for j in jobs if j.last_attempt_at >= timezone.now() - timedelta(hours=24)]
    assert last_run == max(j.last_attempt_at for j in jobs)
    assert jobs_24h == len(recent) == len(park.leads)
    assert matched_24h == sum(j.status == "matched" for j in recent) == 3
    assert reports.gap_diagnose()["freshness"]["identity_matching_jobs"] == {
        "last_run": last_run, "jobs_last_24h": jobs_24h, "matched_last_24h": matched_24h}


def test_matched_last_24h_counts_leads_and_unique_persons(park):
    ((matched, persons),) = sql_rows(RUNBOOK_MATCHED_LAST_24H)

    links = IdentityLink.objects.filter(source_table=LEADS_TABLE)
    # Juan Carlos's two leads are one person.
    assert (matched, persons) == (links.count(), len({link.person_id for link in links})) == (3, 2)
    assert reports.gap_diagnose()["matched_last_24h"] == {"matched_last_24h": 3, "unique_persons_matched": 2}


def test_matched_no_link_is_zero_after_a_clean_run_and_counts_a_planted_row(park):
    assert sql_rows(RUNBOOK_MATCHED_NO_LINK) == [(0,)]

    IdentityMatchingJob.objects.filter(source_id=park.lead_bare.source_pk).update(
        status="matched", fail_reason=None, matched_person=make_person())

    assert sql_rows(RUNBOOK_MATCHED_NO_LINK) == [(1,)]
    assert guardrails.identity_links_origins_check().details["counts"]["matched_job_without_link"] == 1


def test_unmatched_reason_codes_equal_a_counter_over_the_recent_rows(park):
    rows = dict(sql_rows(RUNBOOK_UNMATCHED_REASONS))

    recent = IdentityUnmatched.objects.filter(snapshot_date__gt=lima_today() - timedelta(days=7))
    assert rows == Counter(recent.values_list("reason_code", flat=True))
    assert rows == {"NO_CANDIDATES": 2, "MISSING_IDENTIFIERS": 1}  # the 30-day-old row is left out


def test_gap_unresolved_count(park):
    ((unresolved,),) = sql_rows(RUNBOOK_GAP_UNRESOLVED)

    assert unresolved == IdentityGapAnalysis.objects.exclude(gap_reason="resolved").count()
    # Three matched leads are resolved; the three unlinked ones and the old lead are not.
    assert unresolved == CabinetLead.objects.count() - 3 == 4
    assert reports.gap_summary()["unresolved"] == unresolved


def test_limbo_and_funnel_queries_on_the_pipeline_add_up_to_the_leads(park):
    distribution = sql_rows(RUNBOOK_FROM_TEST_VIEWS["RUNBOOK_LIMBO_DISTRIBUTION"])
    assert sum(count for _, count, _ in distribution) == CabinetLead.objects.count()
    assert dict((stage, count) for stage, count, _ in distribution) == Counter(
        CabinetLeadsLimbo.objects.values_list("limbo_stage", flat=True))

    weeks = sql_rows(RUNBOOK_FROM_TEST_VIEWS["RUNBOOK_WEEKLY_AUDIT"])
    assert all(sum(stages) == total for _, total, *stages in weeks)

    (post_05,) = sql_rows(RUNBOOK_FROM_TEST_VIEWS["RUNBOOK_POST_05_COUNT"])[0]
    assert sum(n for _, n in sql_rows(RUNBOOK_FROM_TEST_VIEWS["RUNBOOK_POST_05_DISTRIBUTION"])) == post_05


def test_unresolved_today_vs_yesterday_on_the_pipeline(park):
    ((today, yesterday, delta),) = sql_rows(RUNBOOK_FROM_TEST_VIEWS["RUNBOOK_UNRESOLVED_TODAY_VS_YESTERDAY"])

    assert today == IdentityGapAnalysis.objects.exclude(gap_reason="resolved").count()
    assert yesterday == 1  # the failed attempt 30 h ago
    assert delta == today - yesterday


# --- no runbook query is left out ---------------------------------------------------------


def _statements(sql: str) -> list[str]:
    """The statements of a SQL text, comments dropped and whitespace collapsed."""
    text = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [" ".join(s.split()) for s in text.split(";") if s.strip()]


def _runbook_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted(SEEDS.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        found += [(path.name, m) for m in re.findall(r"```sql\n(.*?)```", text, re.S)]
        found += [(path.name, m) for m in re.findall(r"`(SELECT [^`]*)`", text)]
    return found


def test_every_runbook_query_is_covered_verbatim():
    queries = _runbook_queries()
    if not queries:
        pytest.skip(f"the runbooks are not at {SEEDS}")
    ours = {s for sql in [*(v for k, v in globals().items() if k.startswith(("RUNBOOK_", "SOURCE_PK_"))
                            and isinstance(v, str)), *RUNBOOK_FROM_TEST_VIEWS.values()]
            for s in _statements(sql)}

    missing = [(name, s) for name, sql in queries for s in _statements(sql) if s not in ours]

    assert not missing
    assert len(queries) == 10


def test_the_product_uses_the_runbook_queries_verbatim():
    assert _statements(guardrails.RUNBOOK_MATCHED_NO_LINK) == _statements(RUNBOOK_MATCHED_NO_LINK)
    assert _statements(reports.RUNBOOK_FRESHNESS) == _statements(RUNBOOK_FRESHNESS)
    assert _statements(reports.RUNBOOK_MATCHED_LAST_24H) == _statements(RUNBOOK_MATCHED_LAST_24H)
