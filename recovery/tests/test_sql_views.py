"""The SQL views of SPEC §5 on small hand-made data, and the operators' runbook queries against them."""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

import recovery.sql_views  # noqa: F401 - registers the view models, so migrate creates the views
from identity import linking
from identity.models import DRIVERS_TABLE, IdentityLinkHistory
from identity.tests.factories import (
    lima_datetime,
    lima_today,
    link_driver,
    link_lead,
    make_claim,
    make_driver,
    make_lead,
    make_person,
    make_person_with_driver,
    make_trips,
    set_origin,
)
from recovery.models import IdentityMatchingJob, KpiRedRecoveryQueue
from recovery.sql_views import (
    CabinetFinancial14d,
    CabinetLeadsLimbo,
    DriverUnlinkedActivity,
    FunnelAuditWeekly,
    IdentityGapAnalysis,
    KpiRedBacklog,
    KpiRedRecoveryMetricsDaily,
)

pytestmark = pytest.mark.django_db

AMOUNT = {m: Decimal(a) for m, a in settings.CT4["MILESTONES"].items()}


def by_lead(view) -> dict:
    return {row.lead_source_pk: row for row in view.objects.all()}


def sql_rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def test_migrate_creates_every_view_in_ops():
    names = {row[0] for row in sql_rows("SELECT table_name FROM information_schema.views WHERE table_schema = 'ops'")}
    assert names >= {
        "v_cabinet_kpi_red_backlog",
        "v_identity_gap_analysis",
        "v_identity_driver_unlinked_activity",
        "v_cabinet_financial_14d",
        "v_cabinet_leads_limbo",
        "v_cabinet_14d_funnel_audit_weekly",
        "v_cabinet_kpi_red_recovery_metrics_daily",
    }


@pytest.mark.parametrize(
    "view",
    [
        KpiRedBacklog,
        IdentityGapAnalysis,
        DriverUnlinkedActivity,
        CabinetFinancial14d,
        CabinetLeadsLimbo,
        FunnelAuditWeekly,
        KpiRedRecoveryMetricsDaily,
    ],
)
def test_each_model_declares_exactly_its_views_columns(view):
    schema, name = view._meta.db_table.replace('"', "").split(".")
    columns = sql_rows(
        "SELECT column_name FROM information_schema.columns"
        f" WHERE table_schema = '{schema}' AND table_name = '{name}' ORDER BY ordinal_position"
    )
    assert [c for (c,) in columns] == [field.column for field in view._meta.fields]


# --- backlog and gap analysis ---------------------------------------------------------


def test_backlog_holds_leads_without_link_and_without_claim():
    red = make_lead(days_ago=3)
    linked = make_lead(days_ago=3)
    link_lead(linked, make_person())
    # A claim takes the lead out whatever its status, even rejected.
    claimed = make_lead(days_ago=3, external_id="CAB-2026-000871")
    make_claim(claimed, milestone=1, status="rejected")

    backlog = by_lead(KpiRedBacklog)

    assert set(backlog) == {red.source_pk}
    row = backlog[red.source_pk]
    assert (row.lead_id, row.lead_date, row.park_id) == (red.id, red.lead_date, red.park_id)
    assert row.days_since_lead == 3 and row.risk_level == "high"


@pytest.mark.parametrize(
    ("days_ago", "risk"), [(0, "high"), (13, "high"), (14, "medium"), (45, "medium"), (46, "low"), (200, "low")]
)
def test_risk_level_boundaries_follow_the_lima_date(days_ago, risk):
    lead = make_lead(days_ago=days_ago)

    gap = IdentityGapAnalysis.objects.get(lead_source_pk=lead.source_pk)
    backlog = KpiRedBacklog.objects.get(lead_source_pk=lead.source_pk)

    assert gap.days_since_lead == backlog.days_since_lead == (lima_today() - lead.lead_date).days == days_ago
    assert gap.risk_level == backlog.risk_level == risk


def test_gap_reason_for_each_case():
    unlinked = make_lead(days_ago=20)

    no_origin = make_lead(days_ago=20)
    link_lead(no_origin, make_person())

    resolved = make_lead(days_ago=20)
    person = make_person()
    link_lead(resolved, person)
    set_origin(person, resolved)

    # Origin names a lead that is not linked to this person (here: linked to nobody).
    foreign = make_lead(days_ago=20)
    stray = make_lead(days_ago=25)
    person = make_person()
    link_lead(foreign, person)
    set_origin(person, stray)

    # Origin names a linked lead that is not the person's earliest one: both leads show it.
    first = make_lead(days_ago=30)
    second = make_lead(days_ago=10)
    person = make_person()
    link_lead(first, person)
    link_lead(second, person)
    set_origin(person, second)

    gaps = by_lead(IdentityGapAnalysis)

    assert gaps[unlinked.source_pk].gap_reason == "no_identity"
    assert gaps[unlinked.source_pk].person_key is None
    assert gaps[no_origin.source_pk].gap_reason == "no_origin"
    assert gaps[resolved.source_pk].gap_reason == "resolved"
    assert gaps[foreign.source_pk].gap_reason == "inconsistent_origin"
    assert gaps[foreign.source_pk].expected_origin_source_id == foreign.source_pk
    assert gaps[stray.source_pk].gap_reason == "no_identity"
    assert gaps[first.source_pk].gap_reason == gaps[second.source_pk].gap_reason == "inconsistent_origin"
    assert gaps[second.source_pk].origin_source_id == second.source_pk
    assert gaps[second.source_pk].expected_origin_source_id == first.source_pk
    assert gaps[first.source_pk].person_key == person.person_key


def test_earliest_lead_ties_on_created_at_are_broken_by_source_pk():
    moment = lima_datetime(lima_today() - timedelta(days=5), hour=9)
    lead_a = make_lead(external_id="CAB-A-0001", created_at=moment)
    lead_b = make_lead(external_id="CAB-B-0001", created_at=moment)
    person = make_person()
    link_lead(lead_a, person)
    link_lead(lead_b, person)

    set_origin(person, lead_a)
    assert {row.gap_reason for row in IdentityGapAnalysis.objects.all()} == {"resolved"}

    set_origin(person, lead_b)
    assert {row.gap_reason for row in IdentityGapAnalysis.objects.all()} == {"inconsistent_origin"}


# --- drivers with activity and no identity ---------------------------------------------


def test_unlinked_activity_lists_only_unlinked_drivers_with_trips():
    today = lima_today()
    active = make_driver(park_id="park-lima-sur")
    make_trips(active, {today: 3, today - timedelta(days=6): 2, today - timedelta(days=30): 5})
    week_edge = make_driver()
    make_trips(week_edge, {today - timedelta(days=7): 4})
    zero_trips = make_driver()
    make_trips(zero_trips, {today: 0})
    make_driver()  # no trips at all
    linked = make_driver()
    make_trips(linked, {today: 9})
    link_driver(linked, make_person())

    rows = {row.driver_id: row for row in DriverUnlinkedActivity.objects.all()}

    assert set(rows) == {active.driver_id, week_edge.driver_id}
    row = rows[active.driver_id]
    assert row.park_id == "park-lima-sur"
    assert (row.first_trip_date, row.last_trip_date) == (today - timedelta(days=30), today)
    assert (row.trips_total, row.trips_today, row.trips_last_7d) == (10, 3, 5)
    assert row.active_today and row.active_last_7d
    edge = rows[week_edge.driver_id]
    assert (edge.trips_today, edge.trips_last_7d, edge.trips_total) == (0, 0, 4)
    assert not edge.active_today and not edge.active_last_7d


# --- 14-day money --------------------------------------------------------------------


def test_trips_count_from_lead_date_to_day_13_across_the_persons_drivers():
    lead = make_lead(days_ago=40)
    person, driver = make_person_with_driver()
    second_driver = make_driver(park_id="park-lima-sur")
    link_driver(second_driver, person)
    link_lead(lead, person)
    start = lead.lead_date
    make_trips(driver, {start - timedelta(days=1): 50, start: 2, start + timedelta(days=13): 1})
    make_trips(second_driver, {start + timedelta(days=5): 3, start + timedelta(days=14): 40})

    row = CabinetFinancial14d.objects.get(lead_source_pk=lead.source_pk)

    assert row.trips_14d == 6
    assert row.driver_ids == sorted([driver.driver_id, second_driver.driver_id]) and row.driver_count == 2
    assert (row.reached_m1, row.reached_m5, row.reached_m25) == (True, True, False)
    assert row.expected_amount == AMOUNT[1] + AMOUNT[5]
    assert row.window_last_date == start + timedelta(days=13) and not row.window_open
    assert row.missing_claim_milestones == [1, 5]


def test_claimed_paid_amounts_and_missing_claim_milestones():
    lead = make_lead(days_ago=30)
    person, driver = make_person_with_driver()
    link_lead(lead, person)
    make_trips(driver, start=lead.lead_date, counts=[3, 3, 3, 3, 3, 3, 3, 3, 3])  # 27 trips
    make_claim(lead, milestone=1, status="paid", driver_id=driver)
    make_claim(lead, milestone=5, status="claimed", driver_id=driver)

    # A rejected claim is still a claim row: the milestone is not "missing".
    other = make_lead(days_ago=30)
    other_person, other_driver = make_person_with_driver()
    link_lead(other, other_person)
    make_trips(other_driver, {other.lead_date: 6})
    make_claim(other, milestone=1, status="expected")
    make_claim(other, milestone=5, status="rejected")

    unlinked = make_lead(days_ago=2)
    make_claim(unlinked, milestone=1, status="claimed")

    rows = by_lead(CabinetFinancial14d)

    row = rows[lead.source_pk]
    assert row.trips_14d == 27 and row.reached_m25
    assert row.expected_amount == AMOUNT[1] + AMOUNT[5] + AMOUNT[25]
    assert row.claimed_amount == AMOUNT[1] + AMOUNT[5]
    assert row.paid_amount == AMOUNT[1]
    assert row.claims_count == 2
    assert row.missing_claim_milestones == [25]

    row = rows[other.source_pk]
    assert (row.claimed_amount, row.paid_amount, row.claims_count) == (0, 0, 2)
    assert row.missing_claim_milestones == []

    row = rows[unlinked.source_pk]
    assert row.person_key is None and row.driver_ids == [] and row.driver_count == 0
    assert (row.trips_14d, row.expected_amount, row.claimed_amount) == (0, 0, AMOUNT[1])
    assert row.window_open


# --- limbo and weekly funnel ---------------------------------------------------------


def _lead_in_stage(stage: str, *, days_ago: int = 20):
    """A lead that sits in `stage`, with everything earlier stages need (and later ones lack)."""
    lead = make_lead(days_ago=days_ago)
    if stage == "NO_IDENTITY":
        make_claim(lead, milestone=1)  # a claim does not give it an identity
        return lead
    person = make_person()
    link_lead(lead, person)
    set_origin(person, lead)
    if stage == "NO_DRIVER":
        make_claim(lead, milestone=1)
        return lead
    driver = make_driver()
    link_driver(driver, person)
    if stage == "NO_TRIPS_14D":
        make_trips(driver, {lead.lead_date + timedelta(days=14): 30})
        make_claim(lead, milestone=1)
        return lead
    make_trips(driver, {lead.lead_date + timedelta(days=13): 7})
    make_claim(lead, milestone=1)
    if stage == "OK":
        make_claim(lead, milestone=5, status="paid")
    return lead


@pytest.mark.parametrize("stage", ["NO_IDENTITY", "NO_DRIVER", "NO_TRIPS_14D", "TRIPS_NO_CLAIM", "OK"])
def test_each_limbo_stage_in_order_of_precedence(stage):
    lead = _lead_in_stage(stage)

    assert CabinetLeadsLimbo.objects.get(lead_source_pk=lead.source_pk).limbo_stage == stage


def test_trips_without_any_claim_is_trips_no_claim():
    lead = make_lead(days_ago=20)
    person, driver = make_person_with_driver()
    link_lead(lead, person)
    make_trips(driver, {lead.lead_date: 1})

    row = CabinetLeadsLimbo.objects.get(lead_source_pk=lead.source_pk)

    assert (row.limbo_stage, row.trips_14d, row.missing_claim_milestones) == ("TRIPS_NO_CLAIM", 1, [1])


def test_weekly_funnel_counts_stages_per_monday():
    today = lima_today()
    monday = today - timedelta(days=today.weekday())
    for stage, day in [
        ("NO_IDENTITY", monday - timedelta(days=14)),
        ("NO_DRIVER", monday - timedelta(days=14)),
        ("OK", monday - timedelta(days=8)),  # a Sunday: belongs to the week starting 13 days before
        ("TRIPS_NO_CLAIM", monday - timedelta(days=7)),
        ("NO_TRIPS_14D", monday - timedelta(days=1)),
    ]:
        _lead_in_stage(stage, days_ago=(today - day).days)

    weeks = {row.week_start: row for row in FunnelAuditWeekly.objects.all()}

    assert set(weeks) == {monday - timedelta(days=14), monday - timedelta(days=7)}
    assert all(week.weekday() == 0 for week in weeks)
    first, second = weeks[monday - timedelta(days=14)], weeks[monday - timedelta(days=7)]
    assert (first.leads_total, first.limbo_no_identity, first.limbo_no_driver, first.limbo_ok) == (3, 1, 1, 1)
    assert (second.leads_total, second.limbo_trips_no_claim, second.limbo_no_trips_14d) == (2, 1, 1)
    for week in weeks.values():
        stages = (
            week.limbo_no_identity,
            week.limbo_no_driver,
            week.limbo_no_trips_14d,
            week.limbo_trips_no_claim,
            week.limbo_ok,
        )
        assert sum(stages) == week.leads_total
    assert sum(week.leads_total for week in weeks.values()) == CabinetLeadsLimbo.objects.count()


# --- red-KPI recovery metrics ------------------------------------------------------


def _at(days_ago: int, hour: int):
    return lima_datetime(lima_today() - timedelta(days=days_ago), hour=hour)


def _queue_failure(source_pk: str, reason: str, *, days_ago: int):
    KpiRedRecoveryQueue.objects.create(
        lead_source_pk=source_pk, status="failed", fail_reason=reason, attempts=1, last_attempt_at=_at(days_ago, 12)
    )


def _assert_metric_invariants(rows):
    assert rows[0].backlog_start == 0
    for previous, row in zip([None, *rows], rows):
        assert row.backlog_end == row.backlog_start + row.new_backlog_in - row.matched_out
        assert row.net_change == row.new_backlog_in - row.matched_out
        if previous is not None:
            assert row.metric_date == previous.metric_date + timedelta(days=1)
            assert row.backlog_start == previous.backlog_end
    assert rows[-1].metric_date == lima_today()
    assert rows[-1].backlog_end == KpiRedBacklog.objects.count()


def test_recovery_metrics_follow_links_and_claims_day_by_day():
    never_linked = make_lead(created_at=_at(5, 10))
    linked_later = make_lead(created_at=_at(5, 11))
    link_lead(linked_later, make_person(), linked_at=_at(3, 9))
    same_day = make_lead(created_at=_at(4, 10))
    link_lead(same_day, make_person(), linked_at=_at(4, 18))
    claimed_then_linked = make_lead(created_at=_at(4, 11))
    make_claim(claimed_then_linked, created_at=_at(3, 15))
    link_lead(claimed_then_linked, make_person(), linked_at=_at(1, 10))
    # Claimed before the lead row existed: never in the backlog, so its link is not a drain.
    born_claimed = make_lead(created_at=_at(2, 10))
    make_claim(born_claimed, created_at=_at(2, 9))
    link_lead(born_claimed, make_person(), linked_at=_at(1, 11))
    # A link removed later: the lead is back in the backlog, on every day since it entered.
    unlinked_again = make_lead(created_at=_at(2, 12))
    link_lead(unlinked_again, make_person(), linked_at=_at(1, 12)).delete()
    fresh = make_lead(created_at=timezone.now())
    for reason in ("NO_CANDIDATES", "NO_CANDIDATES", "WEAK_MATCH_ONLY"):
        _queue_failure(f"Q1-{reason}-{KpiRedRecoveryQueue.objects.count()}", reason, days_ago=1)
    _queue_failure("Q2-a", "WEAK_MATCH_ONLY", days_ago=2)
    _queue_failure("Q2-b", "CONFLICT_MULTIPLE_CANDIDATES", days_ago=2)
    KpiRedRecoveryQueue.objects.create(lead_source_pk="Q3-pending", last_attempt_at=_at(3, 12))

    rows = list(KpiRedRecoveryMetricsDaily.objects.order_by("metric_date"))

    _assert_metric_invariants(rows)
    today = lima_today()
    assert rows[0].metric_date == today - timedelta(days=5)
    flows = {(today - row.metric_date).days: (row.new_backlog_in, row.matched_out, row.backlog_end) for row in rows}
    assert flows == {
        5: (2, 0, 2),  # never_linked, linked_later
        4: (2, 1, 3),  # same_day counts in and out; claimed_then_linked enters
        3: (0, 2, 1),  # linked_later linked, claimed_then_linked claimed
        2: (1, 0, 2),  # unlinked_again enters; born_claimed never does
        1: (0, 0, 2),  # the link after a claim and the link on born_claimed are no drain
        0: (1, 0, 3),  # fresh
    }
    backlog = set(KpiRedBacklog.objects.values_list("lead_source_pk", flat=True))
    assert backlog == {never_linked.source_pk, unlinked_again.source_pk, fresh.source_pk}
    reasons = {(today - row.metric_date).days: row.top_fail_reason for row in rows}
    assert reasons[1] == "NO_CANDIDATES"
    assert reasons[2] == "CONFLICT_MULTIPLE_CANDIDATES"  # a tie goes to the first name
    assert reasons[3] is None and reasons[0] is None


def test_recovery_metrics_count_an_undone_link_as_an_entry_on_the_day_it_was_undone(ana):
    def undo(lead, person, *, days_ago: int):
        outcome = linking.lead_unlink(source_pk=lead.source_pk, person_key=str(person.pk), user=ana,
                                      reason="no es la misma persona", undone_via="command")
        IdentityLinkHistory.objects.filter(pk=outcome.history_id).update(undone_at=_at(days_ago, 15))

    undone = make_lead(created_at=_at(5, 10))
    first = make_person()
    link_lead(undone, first, linked_at=_at(4, 9))
    undo(undone, first, days_ago=2)
    # Undone, then linked to the right person.
    relinked = make_lead(created_at=_at(5, 11))
    wrong = make_person()
    link_lead(relinked, wrong, linked_at=_at(4, 10))
    undo(relinked, wrong, days_ago=3)
    link_lead(relinked, make_person(), linked_at=_at(1, 9))
    # Claimed before its link was undone: the claim keeps it out of the backlog, no new entry.
    claimed = make_lead(created_at=_at(5, 12))
    other = make_person()
    link_lead(claimed, other, linked_at=_at(4, 11))
    make_claim(claimed, created_at=_at(3, 9))
    undo(claimed, other, days_ago=2)

    rows = list(KpiRedRecoveryMetricsDaily.objects.order_by("metric_date"))

    _assert_metric_invariants(rows)
    today = lima_today()
    flows = {(today - row.metric_date).days: (row.new_backlog_in, row.matched_out, row.backlog_end) for row in rows}
    assert flows == {
        5: (3, 0, 3),  # all three arrive
        4: (0, 3, 0),  # all three linked
        3: (1, 0, 1),  # relinked's link undone
        2: (1, 0, 2),  # undone's link undone; claimed's undo is no entry
        1: (0, 1, 1),  # relinked linked to the right person
        0: (0, 0, 1),
    }
    assert set(KpiRedBacklog.objects.values_list("lead_source_pk", flat=True)) == {undone.source_pk}


def test_recovery_metrics_invariants_hold_on_a_busier_history():
    drains = 0
    for days_ago in range(12, -1, -1):
        for k in range(days_ago % 4 + 1):
            lead = make_lead(created_at=_at(days_ago, 8 + k))
            born_claimed = k == 3 or (k == 2 and days_ago % 2 == 0)
            if born_claimed:
                make_claim(lead, created_at=_at(days_ago, 7))
            if k % 2 == 0 and days_ago > 2:
                link_lead(lead, make_person(), linked_at=_at(days_ago - k - 1, 20))
                drains += not born_claimed

    rows = list(KpiRedRecoveryMetricsDaily.objects.order_by("metric_date"))

    _assert_metric_invariants(rows)
    assert len(rows) == 13
    assert sum(row.matched_out for row in rows) == drains


def test_recovery_metrics_without_leads_is_one_quiet_today():
    rows = list(KpiRedRecoveryMetricsDaily.objects.all())

    assert [(r.metric_date, r.backlog_start, r.new_backlog_in, r.matched_out, r.backlog_end) for r in rows] == [
        (lima_today(), 0, 0, 0, 0)
    ]
    assert rows[0].top_fail_reason is None


# --- the operators' runbooks, verbatim (../shared/seeds) ----------------------------

RUNBOOK_LIMBO_DISTRIBUTION = """
-- Verificar distribución de limbo después del job
SELECT
    limbo_stage,
    COUNT(*) AS count,
    COUNT(*) FILTER (WHERE lead_date > CURRENT_DATE - INTERVAL '30 days') AS recent
FROM ops.v_cabinet_leads_limbo
GROUP BY limbo_stage
ORDER BY count DESC;
"""

RUNBOOK_WEEKLY_AUDIT = """
-- Verificar últimas semanas
SELECT
    week_start,
    leads_total,
    limbo_no_identity,
    limbo_no_driver,
    limbo_no_trips_14d,
    limbo_trips_no_claim,
    limbo_ok
FROM ops.v_cabinet_14d_funnel_audit_weekly
ORDER BY week_start DESC
LIMIT 4;
"""

RUNBOOK_POST_05_COUNT = """
-- Debe retornar 62 (baseline)
SELECT COUNT(*)
FROM ops.v_cabinet_leads_limbo
WHERE lead_date > '2026-01-05';
"""

RUNBOOK_POST_05_DISTRIBUTION = """
-- Verificar distribución
SELECT
    limbo_stage,
    COUNT(*)
FROM ops.v_cabinet_leads_limbo
WHERE lead_date > '2026-01-05'
GROUP BY limbo_stage;
"""

RUNBOOK_UNRESOLVED_TODAY_VS_YESTERDAY = """
-- Comparar unresolved hoy vs ayer (requiere snapshot diario o usar histórico)
WITH today_gap AS (
    SELECT COUNT(*) FILTER (WHERE gap_reason != 'resolved') as unresolved_today
    FROM ops.v_identity_gap_analysis
),
yesterday_gap AS (
    -- Si tienes tabla histórica, usar eso. Si no, calcular desde jobs
    SELECT COUNT(*) FILTER (WHERE status != 'matched') as unresolved_yesterday
    FROM ops.identity_matching_jobs
    WHERE last_attempt_at < NOW() - INTERVAL '24 hours'
)
SELECT
    t.unresolved_today,
    y.unresolved_yesterday,
    t.unresolved_today - y.unresolved_yesterday as delta
FROM today_gap t, yesterday_gap y;
"""


@pytest.fixture
def park_in_every_stage():
    leads = []
    for days_ago, stage in [
        (3, "NO_IDENTITY"),
        (5, "NO_IDENTITY"),
        (9, "NO_DRIVER"),
        (20, "NO_TRIPS_14D"),
        (40, "TRIPS_NO_CLAIM"),
        (60, "OK"),
        (400, "NO_IDENTITY"),
    ]:
        leads.append(_lead_in_stage(stage, days_ago=days_ago))
    return leads


def test_runbook_limbo_queries_run_verbatim_and_agree_with_the_view(park_in_every_stage):
    distribution = sql_rows(RUNBOOK_LIMBO_DISTRIBUTION)
    counts = {stage: count for stage, count, _recent in distribution}
    assert counts == {"NO_IDENTITY": 3, "NO_DRIVER": 1, "NO_TRIPS_14D": 1, "TRIPS_NO_CLAIM": 1, "OK": 1}
    assert distribution[0][0] == "NO_IDENTITY"  # ORDER BY count DESC
    assert all(0 <= recent <= count for _stage, count, recent in distribution)
    # The runbook's CURRENT_DATE is the session's (UTC) date; the 30-day edge is far from these leads.
    assert sum(recent for *_, recent in distribution) == 4

    weeks = sql_rows(RUNBOOK_WEEKLY_AUDIT)
    assert 1 <= len(weeks) <= 4
    assert [w[0] for w in weeks] == sorted((w[0] for w in weeks), reverse=True)
    for week_start, total, *stages in weeks:
        assert week_start.weekday() == 0 and sum(stages) == total
        view_row = FunnelAuditWeekly.objects.get(week_start=week_start)
        assert view_row.leads_total == total

    (post_05,) = sql_rows(RUNBOOK_POST_05_COUNT)[0]
    assert post_05 == CabinetLeadsLimbo.objects.filter(lead_date__gt=date(2026, 1, 5)).count()
    by_stage = dict(sql_rows(RUNBOOK_POST_05_DISTRIBUTION))
    assert sum(by_stage.values()) == post_05


def test_runbook_unresolved_today_vs_yesterday_runs_verbatim(park_in_every_stage):
    for n, (status, hours_ago) in enumerate([("failed", 30), ("pending", 48), ("matched", 30), ("failed", 2)]):
        IdentityMatchingJob.objects.create(
            source_id=f"JOB-{n}",
            status=status,
            attempt_count=1,
            fail_reason="NO_CANDIDATES" if status == "failed" else None,
            matched_person=make_person() if status == "matched" else None,
            last_attempt_at=timezone.now() - timedelta(hours=hours_ago),
        )

    ((today, yesterday, delta),) = sql_rows(RUNBOOK_UNRESOLVED_TODAY_VS_YESTERDAY)

    assert today == IdentityGapAnalysis.objects.exclude(gap_reason="resolved").count() == 3
    assert yesterday == 2
    assert delta == today - yesterday


def _unlinked_by_anti_join() -> set[str]:
    return {r[0] for r in sql_rows(f"""
        SELECT d.driver_id FROM public.drivers d
        WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links il
                          WHERE il.source_table = '{DRIVERS_TABLE}' AND il.source_pk = d.driver_id)""")}


def _unlinked_kept() -> set[str]:
    return {r[0] for r in sql_rows("SELECT driver_id FROM canon.drivers_unlinked")}


def test_unlinked_drivers_table_follows_every_write_to_drivers_and_links():
    """canon.drivers_unlinked (trigger-kept, read by the view) equals the anti-join it replaces."""
    a, b, c = make_driver(), make_driver(), make_driver()
    assert _unlinked_kept() == _unlinked_by_anti_join() == {a.driver_id, b.driver_id, c.driver_id}

    person = make_person()
    link_a = link_driver(a, person)
    link_driver(b, person)
    assert _unlinked_kept() == _unlinked_by_anti_join() == {c.driver_id}

    link_a.delete()  # a link removed: its driver is unlinked again
    assert _unlinked_kept() == _unlinked_by_anti_join() == {a.driver_id, c.driver_id}

    c.delete()  # a driver removed leaves the set
    with connection.cursor() as cursor:
        # bulk statements go through the statement-level triggers
        cursor.execute("INSERT INTO public.drivers (driver_id, park_id) "
                       "SELECT 'bulk-' || g, 'p' FROM generate_series(1, 50) g")
        cursor.execute(f"INSERT INTO canon.identity_links (source_table, source_pk, person_key, match_rule, "
                       f"match_score, confidence_level, evidence, rule_version, linked_at, decided_by) "
                       f"SELECT '{DRIVERS_TABLE}', 'bulk-' || g, %s, 'test', 1, 'high', '{{}}', 't', now(), 'system' "
                       f"FROM generate_series(1, 40) g", [person.person_key])
    assert _unlinked_kept() == _unlinked_by_anti_join()
    assert len(_unlinked_kept()) == 1 + 10

    with connection.cursor() as cursor:  # a link moved from one driver to another
        cursor.execute("UPDATE canon.identity_links SET source_pk = 'bulk-45' WHERE source_pk = 'bulk-1'")
        cursor.execute("UPDATE public.drivers SET driver_id = 'bulk-renamed' WHERE driver_id = 'bulk-46'")
    assert _unlinked_kept() == _unlinked_by_anti_join()
    assert {"bulk-1", "bulk-renamed"} <= _unlinked_kept() and "bulk-45" not in _unlinked_kept()

    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # Django's deferred FK checks block a TRUNCATE
        cursor.execute("TRUNCATE canon.identity_links CASCADE")
    every_driver = {d for (d,) in sql_rows("SELECT driver_id FROM public.drivers")}
    assert _unlinked_kept() == _unlinked_by_anti_join() == every_driver


def test_unlinked_drivers_triggers_join_by_hash_whatever_the_statistics():
    """The delete triggers' joins with their transition tables run with nested loops off: believing
    canon.drivers_unlinked empty (its statistics after a first build), the planner scanned it once per
    new driver link, and a first build's COPY of a million driver links took over ten minutes."""
    rows = sql_rows("SELECT proname, proconfig FROM pg_proc WHERE pronamespace = 'canon'::regnamespace "
                    "AND proname IN ('drivers_unlinked_on_link_insert', 'drivers_unlinked_on_driver_delete')")
    assert dict(rows) == {"drivers_unlinked_on_link_insert": ["enable_nestloop=off"],
                          "drivers_unlinked_on_driver_delete": ["enable_nestloop=off"]}
