"""The ops dashboard: its selector's figures against the views, its charts, who may open it, the demo user."""

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

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
    make_person_with_driver,
    make_trips,
)
from recovery import charts
from recovery.dashboard import FUNNEL_STAGES, dashboard_read
from recovery.demo import demo_user_instructions, demo_user_reset
from recovery.models import KpiRedRecoveryQueue
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
