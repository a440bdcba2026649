"""The browser harness itself: a staff user signs in to the admin through Chromium."""

import pytest
from django.contrib.auth import get_user_model

from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_user_signs_in_to_the_admin(page, login, live_server):
    get_user_model().objects.create_superuser("ana", "ana@example.pe", "s3cret-pass-lima")
    login(page, "ana", "s3cret-pass-lima")
    assert page.locator("#site-name").is_visible()
    screenshot(page, "admin-home")


def test_wrong_password_stays_on_the_login_page(page, live_server):
    get_user_model().objects.create_superuser("ana", "ana@example.pe", "s3cret-pass-lima")
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "ana")
    page.fill("#id_password", "wrong")
    page.click("input[type=submit]")
    assert "/login/" in page.url
    assert page.locator(".errornote").is_visible()
