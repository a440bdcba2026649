"""The ops dashboard: its selector's figures against the views, its charts, who may open it, the demo user."""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from identity.models import CabinetLead, IdentityUnmatched, JobRun, Person
from identity.tests.factories import (
    lima_today,
    link_driver,
    link_lead,
    make_claim,
    make_driver,
    make_lead,
    make_person,
    make_person_with_driver,
    make_trips,
)
from recovery import charts
from recovery.dashboard import FUNNEL_STAGES, audit_quality, dashboard_read
from recovery.demo import demo_user_instructions, demo_user_reset
from recovery.models import AuditItem, KpiRedRecoveryQueue
from recovery.review.quality import wilson_interval
from recovery.sql_views import KpiRedBacklog

pytestmark = pytest.mark.django_db

SVG_CHART = re.compile(r'<svg class="chart"')


@dataclass
class DashboardPark:
    red_new: CabinetLead
    red_mid: CabinetLead
    red_old: CabinetLead
    claimed: CabinetLead
    recovered_a: CabinetLead
    recovered_b: CabinetLead
    reconciled: CabinetLead


def _queue(lead: CabinetLead, *, status: str, person: Person | None = None, reason: str | None = None,
           matched_hours_ago: float | None = None) -> KpiRedRecoveryQueue:
    now = timezone.now()
    return KpiRedRecoveryQueue.objects.create(
        lead_source_pk=lead.source_pk, status=status, attempts=1, fail_reason=reason, matched_person=person,
        last_attempt_at=now - timedelta(hours=matched_hours_ago or 0), lead_created_at=lead.created_at,
        matched_at=now - timedelta(hours=matched_hours_ago) if matched_hours_ago is not None else None,
    )


def _unmatched(lead: CabinetLead, reason: str) -> IdentityUnmatched:
    return IdentityUnmatched.objects.create(source_table="module_ct_cabinet_leads", source_pk=lead.source_pk,
                                            reason_code=reason, snapshot_date=lima_today())


def dashboard_park() -> DashboardPark:
    """Three red leads (high, medium, low risk), a claimed one, two the recovery queue matched (S/ 60 and
    S/ 25 expected), one linked outside the queue (S/ 160 expected), and an unlinked driver with trips today."""
    park = DashboardPark(
        red_new=make_lead(days_ago=2, first_name="Rocío", last_name="Mamani Quispe"),
        red_mid=make_lead(days_ago=20, first_name="Martín", last_name="Flores Chávez"),
        red_old=make_lead(days_ago=60, first_name="Inés", last_name="Huamán Ñahui"),
        claimed=make_lead(days_ago=12),
        recovered_a=make_lead(days_ago=10),
        recovered_b=make_lead(days_ago=3),
        reconciled=make_lead(days_ago=16),
    )
    make_claim(park.claimed, milestone=1, status="claimed")

    person_a, driver_a = make_person_with_driver()
    link_lead(park.recovered_a, person_a)
    make_trips(driver_a, start=park.recovered_a.lead_date, counts=[1, 1, 1, 1, 1, 1])  # milestones 1 and 5
    make_claim(park.recovered_a, milestone=1, status="paid", driver_id=driver_a.driver_id)
    _queue(park.recovered_a, status="matched", person=person_a, matched_hours_ago=1)

    person_b, driver_b = make_person_with_driver()
    link_lead(park.recovered_b, person_b)
    make_trips(driver_b, start=park.recovered_b.lead_date, counts=[1])  # milestone 1
    _queue(park.recovered_b, status="matched", person=person_b, matched_hours_ago=30)

    person_c, driver_c = make_person_with_driver()
    link_lead(park.reconciled, person_c)
    make_trips(driver_c, start=park.reconciled.lead_date, counts=[10, 10, 10])  # 1, 5 and 25: not the queue's

    _queue(park.red_new, status="failed", reason="WEAK_MATCH_ONLY")
    _queue(park.red_old, status="failed", reason="NO_CANDIDATES")
    _unmatched(park.red_new, "WEAK_MATCH_ONLY")
    _unmatched(park.red_mid, "CONFLICT_MULTIPLE_CANDIDATES")
    _unmatched(park.red_old, "NO_CANDIDATES")

    unlinked = make_driver(driver_id="D-SIN-IDENTIDAD")
    make_trips(unlinked, {lima_today(): 4, lima_today() - timedelta(days=3): 2})
    linked_busy = make_driver(driver_id="D-CON-IDENTIDAD")
    link_driver(linked_busy, person_c)
    make_trips(linked_busy, {lima_today(): 9})
    return park


@pytest.fixture
def park() -> DashboardPark:
    return dashboard_park()


# --- the selector -----------------------------------------------------------------------


def test_red_kpi_is_the_backlog_view_and_the_trend_ends_on_it(park):
    data = dashboard_read()

    assert data["red_kpi"]["backlog"] == KpiRedBacklog.objects.count() == 3
    assert data["red_kpi"]["by_risk"] == {"high": 1, "medium": 1, "low": 1}
    trend = data["trend"]
    assert len(trend) == 30 and trend[-1]["metric_date"] == lima_today()
    assert trend[-1]["backlog_end"] == 3
    assert [d["metric_date"] for d in trend] == sorted(d["metric_date"] for d in trend)


def test_money_recovered_is_the_expected_amount_of_queue_matched_leads_only(park):
    money = dashboard_read()["money_recovered"]

    # recovered_a: 6 trips -> milestones 1 + 5 = 25 + 35; recovered_b: 1 trip -> 25. The lead linked
    # outside the queue (160 expected) and the failed rows do not count.
    assert money["leads"] == 2
    assert money["expected_amount"] == Decimal("85.00")
    assert money["claimed_amount"] == Decimal("25.00")
    assert money["paid_amount"] == Decimal("25.00")


def test_matched_last_24h_counts_only_the_last_day(park):
    assert dashboard_read()["matched_last_24h"]["leads"] == 1  # recovered_a 1 h ago, recovered_b 30 h ago


def test_fail_reasons_review_counts_and_unlinked_drivers(park):
    data = dashboard_read()

    assert data["fail_reasons"]["queue"] == {"NO_CANDIDATES": 1, "WEAK_MATCH_ONLY": 1}
    assert data["review"] == {"by_reason": {"CONFLICT_MULTIPLE_CANDIDATES": 1, "WEAK_MATCH_ONLY": 1}, "total": 2}
    drivers = data["unlinked_drivers"]
    assert (drivers["drivers"], drivers["active_today"], drivers["active_last_7d"]) == (1, 1, 1)
    assert [(d["driver_id"], d["trips_today"], d["trips_last_7d"]) for d in drivers["busiest"]] == [
        ("D-SIN-IDENTIDAD", 4, 6)]


def test_funnel_covers_the_recent_weeks_by_stage(park):
    weeks = dashboard_read()["funnel"]

    monday = lima_today() - timedelta(days=lima_today().weekday())
    assert [w["week_start"] for w in weeks] == [monday - timedelta(weeks=11 - i) for i in range(12)]
    assert any(w["leads_total"] == 0 for w in weeks)  # quiet weeks stay on the axis
    assert all(w["leads_total"] == sum(w[column] for column, _ in FUNNEL_STAGES) for w in weeks)
    assert sum(w["leads_total"] for w in weeks) == 7
    assert sum(w["limbo_no_identity"] for w in weeks) == 4  # three red leads and the claimed, unlinked one
    assert sum(w["limbo_trips_no_claim"] for w in weeks) == 3  # reached milestones nobody claimed yet
    assert sum(w["limbo_ok"] for w in weeks) == 0
    this_week = dashboard_read(funnel_weeks=1)["funnel"]
    assert this_week == [weeks[-1]]


def test_badges_follow_the_job_runs():
    assert dashboard_read()["freshness"]["badge"] == "NEVER"
    assert dashboard_read()["recovery"]["status"] == "NOT_CONFIGURED"
    now = timezone.now()
    JobRun.objects.create(name="recover_kpi_red_leads", status="succeeded", finished_at=now, counts={"matched": 0})
    assert dashboard_read()["freshness"]["badge"] == "OK"
    assert dashboard_read(now=now + timedelta(hours=25))["freshness"]["badge"] == "STALE"


# --- the charts ----------------------------------------------------------------------------


def test_nice_ticks_cover_the_maximum_with_round_steps():
    assert charts.nice_ticks(3548, count=3) == [0, 2000, 4000]
    assert charts.nice_ticks(7) == [0, 2, 4, 6, 8]
    assert charts.nice_ticks(0) == [0, 1]
    assert charts.nice_ticks(2) == [0, 1, 2]  # counts: never a step below 1


def test_trend_chart_draws_one_in_and_one_out_bar_per_day_and_the_backlog_line(park):
    days = dashboard_read()["trend"]
    svg = str(charts.daily_trend_chart(days))

    assert svg.count('class="bar-in"') == svg.count('class="bar-out"') == 30
    assert svg.count("<circle") == 30
    assert f"{lima_today().isoformat()}: backlog 3</title>" in svg


def test_stacked_bars_are_proportional_and_labels_are_escaped():
    svg = str(charts.stacked_bar_chart(
        ["w1", "w2"], [charts.Series("<script>x</script>", [10, 20], charts.RED), charts.Series("b", [10, 0], "#000")],
        label="t"))

    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 3  # a zero value draws no bar
    assert heights[0] == pytest.approx(heights[1]) and heights[2] == pytest.approx(2 * heights[0])
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_empty_charts_say_so():
    assert "No leads yet" in charts.daily_trend_chart([])
    assert "No failed queue rows" in charts.dashboard_charts(dashboard_read())["fail_reasons"]


# --- accuracy from the audits ----------------------------------------------------------------


def _audited(count: int, verdicts: list[str], *, kind: str = "link", at: datetime) -> None:
    """`count` automatic links made at `at` (or, for kind below_threshold, leads sampled then), the first
    ones audited with `verdicts`."""
    for i in range(count):
        lead, person = make_lead(), make_person()
        if kind == "link":
            link_lead(lead, person, match_rule="document_exact", evidence={"score": 35.0}, match_score=35.0,
                      linked_at=at)
        if i < len(verdicts):
            AuditItem.objects.create(source_pk=lead.source_pk, person=person, kind=kind, stratum="x", sampled_at=at,
                                     verdict=verdicts[i], decided_by_name="ana.revisora", decided_at=at)


def audited_park() -> None:
    """January 2026: 10 automatic links, all audited and confirmed; February: 4 links, 3 confirmed and 1
    rejected; 5 leads just below the threshold sampled in February, 1 a true match."""
    lima = ZoneInfo("America/Lima")
    jan, feb = datetime(2026, 1, 15, 12, tzinfo=lima), datetime(2026, 2, 15, 12, tzinfo=lima)
    _audited(10, ["same"] * 10, at=jan)
    _audited(4, ["same", "same", "same", "not_same"], at=feb)
    _audited(5, ["same"] + ["not_same"] * 4, kind="below_threshold", at=feb)


def test_audit_quality_per_month_with_intervals_and_the_warnings(settings):
    audited_park()

    quality = audit_quality()

    jan_low, jan_high = wilson_interval(1.0, 10)
    feb_low, feb_high = wilson_interval(0.75, 4)
    miss_low, miss_high = wilson_interval(0.2, 5)
    months = {m["month"]: m for m in quality["months"]}
    assert list(months) == ["2026-01", "2026-02"] and quality["audited"] == 14 + 5
    assert (months["2026-01"]["precision"], months["2026-01"]["precision_low"]) == \
        pytest.approx((1.0, jan_low), abs=1e-6)
    assert (months["2026-02"]["precision"], months["2026-02"]["precision_low"], months["2026-02"]["precision_high"]) \
        == pytest.approx((0.75, feb_low, feb_high), abs=1e-6)
    assert months["2026-01"]["missed_share"] is None
    assert (months["2026-02"]["missed_share"], months["2026-02"]["recall"], months["2026-02"]["recall_low"],
            months["2026-02"]["recall_high"]) == pytest.approx((0.2, 0.8, 1 - miss_high, 1 - miss_low), abs=1e-6)
    # The default target (0.999) is above every lower bound: the overall estimate and the latest month warn.
    assert quality["target"] == 0.999
    assert [(w["scope"], w["precision_low"]) for w in quality["warnings"]] == [
        ("all months", quality["overall"]["precision_low"]), ("month 2026-02", months["2026-02"]["precision_low"])]
    assert quality["overall"]["links"] == 14 and quality["overall"]["rejected"] == 1

    settings.CT4_AUDIT = {**settings.CT4_AUDIT, "precision_target": feb_low - 0.01}
    assert audit_quality()["warnings"] == []
    settings.CT4_AUDIT = {**settings.CT4_AUDIT, "precision_target": feb_low + 0.01}
    assert [w["scope"] for w in audit_quality()["warnings"]] == ["month 2026-02"]


def test_quality_chart_draws_the_intervals_the_points_and_the_target():
    months = [
        {"month": "2026-01", "precision": 0.99, "precision_low": 0.97, "precision_high": 0.995,
         "missed_share": 0.1, "missed_low": 0.05, "missed_high": 0.18},
        {"month": "2026-02", "precision": None, "precision_low": None, "precision_high": None,
         "missed_share": None, "missed_low": None, "missed_high": None},
        {"month": "2026-03", "precision": 0.995, "precision_low": 0.98, "precision_high": 0.999,
         "missed_share": 0.05, "missed_low": 0.02, "missed_high": 0.12},
        {"month": "2026-<04>", "precision": 1.0, "precision_low": 0.99, "precision_high": 1.0,
         "missed_share": 0.0, "missed_low": 0.0, "missed_high": 0.1},
    ]
    svg = charts.quality_chart(months, target=0.999)

    assert len(re.findall(r'<circle class="point-precision"', svg)) == 3
    assert len(re.findall(r'<line class="interval-missed"', svg)) == 3
    # A band and a line through consecutive months only: March and April, not over February's hole.
    assert len(re.findall(r'<polygon class="band-precision"', svg)) == 1
    assert len(re.findall(r'<polyline class="series-missed"', svg)) == 1
    target_y = float(re.search(r'<line class="target" x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)"', svg).group(1))
    points = {month: float(y) for y, month in re.findall(
        r'class="point-precision" cx="[\d.]+" cy="([\d.]+)"[^>]*><title>([^:]+):', svg)}
    # Higher precision is higher on the chart (smaller y); the target 99.9 % lies between 99 % and 100 %.
    assert points["2026-01"] > target_y > points["2026-&lt;04&gt;"]
    assert "99.90 % (CT4_AUDIT precision_target)" in svg and "<04>" not in svg
    assert "No audited links yet" in charts.quality_chart([], target=0.999)


def test_the_page_shows_the_quality_chart_and_the_warning_naming_the_figures(settings):
    settings.CT4_API_CACHE_SECONDS = 0  # the same page is read under two targets
    audited_park()
    client = Client()
    client.force_login(_user("view_kpiredrecoveryqueue"))

    html = client.get("/ops/").content.decode()

    assert len(SVG_CHART.findall(html)) == 4
    assert re.search(r'id="chart-quality".*?<svg class="chart"', html, re.S)
    warning = re.search(r'data-testid="precision-warning".*?</section>', html, re.S).group(0)
    feb_low, feb_high = wilson_interval(0.75, 4)
    assert "Precision below the target of 0.9990" in warning
    assert (f"Month 2026-02: estimated precision 0.7500, 95 % interval [{feb_low:.4f}, {feb_high:.4f}] from 3 "
            f"confirmed and 1 rejected of 4 links; lower bound {feb_low:.4f} &lt; target 0.9990") in warning
    assert "All months: estimated precision" in warning
    assert 'data-testid="quality-empty"' not in html and not re.search(r"https?://", html)

    settings.CT4_AUDIT = {**settings.CT4_AUDIT, "precision_target": 0.2}
    html = client.get("/ops/").content.decode()
    assert 'data-testid="precision-warning"' not in html
    assert re.search(r'id="chart-quality".*?<svg class="chart"', html, re.S)


def test_without_audited_links_the_page_says_how_to_start(park):
    client = Client()
    client.force_login(_user("view_kpiredrecoveryqueue"))
    html = client.get("/ops/").content.decode()

    empty = re.search(r'data-testid="quality-empty">(.*?)</p>', html, re.S).group(1)
    assert "No audited links yet" in empty and "manage.py audit_sample" in empty
    assert 'data-testid="precision-warning"' not in html
    assert not re.search(r'id="chart-quality".*?<svg', html, re.S)


# --- the page and who may open it -----------------------------------------------------------


def _user(*permissions: str, username: str = "ana.quispe"):
    user = get_user_model().objects.create_user(username, password="x-Lima-2026-x")
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_anonymous_user_is_sent_to_the_login_page():
    response = Client().get("/ops/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/ops/"


def test_root_redirects_to_the_dashboard():
    response = Client().get("/")
    assert response.status_code == 302 and response["Location"] == "/ops/"


def test_user_without_the_view_permission_gets_403():
    client = Client()
    client.force_login(_user("view_identitymatchingjob"))

    assert client.get("/ops/").status_code == 403


def test_permitted_user_sees_the_kpi_and_three_svg_charts_with_no_external_url(park):
    client = Client()
    client.force_login(_user("view_kpiredrecoveryqueue"))

    response = client.get("/ops/")

    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'data-testid="red-kpi">3<', html)
    assert len(SVG_CHART.findall(html)) == 3
    for chart_id in ("chart-trend", "chart-funnel", "chart-fail-reasons"):
        assert re.search(rf'id="{chart_id}">.*?<svg class="chart"', html, re.S), chart_id
    assert 'data-testid="money-recovered"><small style="font-size:16px">S/</small> 85<' in html
    assert 'href="/review/"' in html
    # Offline: no URL to any other host, no script, no external stylesheet or image.
    assert not re.search(r"https?://", html)
    assert "<script" not in html and "<link" not in html and "<img" not in html


def test_page_renders_on_an_empty_database():
    client = Client()
    client.force_login(_user("view_kpiredrecoveryqueue"))

    response = client.get("/ops/")

    assert response.status_code == 200
    assert len(SVG_CHART.findall(response.content.decode())) == 3


# --- the demo user ----------------------------------------------------------------------------


def test_demo_user_gets_a_new_random_password_each_time_and_can_log_in():
    user, first = demo_user_reset()
    same_user, second = demo_user_reset()

    assert same_user.pk == user.pk and same_user.is_superuser and same_user.is_staff
    assert first != second and len(second) >= 16
    assert authenticate(username="demo", password=first) is None
    assert authenticate(username="demo", password=second) == user
    client = Client()
    assert client.login(username="demo", password=second)
    assert client.get("/ops/").status_code == 200


def test_demo_instructions_name_the_server_the_urls_and_the_password():
    lines = "\n".join(demo_user_instructions(username="demo", password="pw-123"))

    assert ".venv/bin/python manage.py runserver" in lines
    for url in ("http://127.0.0.1:8000/ops/", "http://127.0.0.1:8000/review/", "http://127.0.0.1:8000/admin/"):
        assert url in lines
    assert "pw-123" in lines
