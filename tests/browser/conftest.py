"""Browser fixtures: Playwright for Python driving Debian's Chromium against pytest-django's live server.

Chromium comes from apt (`apt-get install chromium`; `.ci/run` installs it), not from
Playwright's own download. Without it the browser tests are skipped on a workstation and
fail in CI (CI=true), so a CI run can never pass without having driven a browser.
Screenshots go to test-output/screenshots/.
"""

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CT4_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"

# Playwright's sync API runs an event loop in the test's thread; Django's ORM refuses to run
# under a running loop unless told that this single-threaded use is safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def chromium():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set CT4_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, request):
    """A fresh browser context and page at a laptop's size; a screenshot is kept if the test fails."""
    context = chromium.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        screenshot(page, f"FAILED-{request.node.name}")
    context.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def login(live_server):
    """login(page, username, password): sign in through the admin's login form."""
    def do_login(page, username: str, password: str, next_url: str = "/admin/"):
        page.goto(f"{live_server.url}/admin/login/?next={next_url}")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_load_state("networkidle")
        assert "/login/" not in page.url, "login failed"

    return do_login
