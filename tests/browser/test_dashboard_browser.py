"""The ops dashboard in Chromium: a user logs in, sees the red KPI and the three charts drawn at a laptop's size;
with audited links, the quality chart and the precision warning."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from recovery.tests.test_dashboard import audited_park, dashboard_park
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "s3cret-pass-lima"


def test_dashboard_shows_the_red_kpi_and_draws_every_chart(page, login, live_server):
    dashboard_park()
    get_user_model().objects.create_superuser("ana", "ana@example.pe", PASSWORD)
    requests = []
    page.on("request", lambda request: requests.append(request.url))

    login(page, "ana", PASSWORD, next_url="/ops/")

    assert page.url == f"{live_server.url}/ops/"
    expect(page.get_by_test_id("red-kpi")).to_have_text("3")
    expect(page.get_by_test_id("freshness-badge")).to_have_text("NEVER")
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(3)
    for i in range(3):
        box = charts.nth(i).bounding_box()
        assert box and box["width"] > 250 and box["height"] > 60, box
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1366, box
    # The charts draw their data, not only their frames.
    assert page.locator("#chart-trend rect.bar-in").count() == 30
    first_bar = page.locator("#chart-funnel rect.bar").first.bounding_box()
    assert first_bar and first_bar["width"] > 0 and first_bar["height"] > 0
    assert page.locator("#chart-fail-reasons rect.bar").count() == 2
    # Usable at 1366 x 768: no horizontal scroll.
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    expect(page.get_by_test_id("review-link")).to_have_attribute("href", "/review/")
    # Offline: every request the page made went to this server.
    assert requests and all(url.startswith(live_server.url) for url in requests), requests
    screenshot(page, "ops-dashboard")


def test_audited_links_draw_the_quality_chart_and_the_warning(page, login, live_server, settings):
    settings.CT4_API_CACHE_SECONDS = 0
    dashboard_park()
    audited_park()
    get_user_model().objects.create_superuser("ana", "ana@example.pe", PASSWORD)

    login(page, "ana", PASSWORD, next_url="/ops/")

    expect(page.locator("svg.chart")).to_have_count(4)
    warning = page.get_by_test_id("precision-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("Precision below the target of 0.9990")
    expect(page.get_by_test_id("precision-warning-2")).to_contain_text("Month 2026-02: estimated precision 0.7500")
    chart = page.locator("#chart-quality svg.chart")
    box = chart.bounding_box()
    assert box and box["width"] > 600 and box["height"] > 150, box
    expect(page.locator("#chart-quality circle.point-precision")).to_have_count(2)
    expect(page.locator("#chart-quality line.target")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    page.locator("#chart-quality").scroll_into_view_if_needed()
    screenshot(page, "ops-dashboard-quality")


def test_anonymous_user_is_sent_to_the_login_page(page, live_server):
    page.goto(f"{live_server.url}/ops/")

    assert page.url == f"{live_server.url}/admin/login/?next=/ops/"
    expect(page.locator("#id_username")).to_be_visible()
    screenshot(page, "ops-dashboard-anonymous")
