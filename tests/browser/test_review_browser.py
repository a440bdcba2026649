"""A reviewer in a real Chromium: opens a conflict from the review list, links it and sees the red
KPI drop and the lead leave the list; rejects every candidate of another and sees a later recovery
run leave it unlinked."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from identity.index import drivers_index_refresh
from identity.matching import RULE_VERSION
from identity.models import IdentityJudgement, IdentityLink
from recovery.review.rules import REVIEWER_GROUP
from recovery.tests.factories import conflict, make_due, person_of, recover
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "lima-review-2026"


def backlog_shown(page) -> int:
    return int(page.locator("#backlog-count").inner_text())


def listed(page) -> list[str]:
    return page.locator("tr.review-row").evaluate_all("rows => rows.map(r => r.dataset.sourcePk)")


def test_reviewer_links_one_conflict_and_rejects_another(page, login, live_server):
    linked_lead, a, _ = conflict(days_ago=2)
    rejected_lead, c, d = conflict(days_ago=5)
    drivers_index_refresh()
    recover()
    user = get_user_model().objects.create_user("ana.revisora", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=REVIEWER_GROUP))

    login(page, "ana.revisora", PASSWORD, next_url="/review/")
    assert page.url.endswith("/review/")
    before = backlog_shown(page)
    assert before == 2
    assert listed(page) == [rejected_lead.source_pk, linked_lead.source_pk]  # the window closing first leads
    screenshot(page, "review-list")

    # Open the conflict: the lead beside both candidates, values marked, score and rule version shown.
    page.click(f"a[href='/review/{linked_lead.source_pk}/']")
    page.wait_for_load_state("networkidle")
    assert page.locator("#rule-version").inner_text() == RULE_VERSION
    assert page.locator(".candidate").count() == 2
    phone_cell = page.locator(f"#candidate-{person_of(a)} tr[data-field=phone] td[data-status]").first
    assert phone_cell.get_attribute("class") == "agree"
    screenshot(page, "review-lead-conflict")

    page.click(f"input[data-action=link][data-person-key='{person_of(a)}']")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/review/")
    assert re.search(r"linked to person", page.locator("ul.messagelist").inner_text())
    assert backlog_shown(page) == before - 1
    assert linked_lead.source_pk not in listed(page)
    link = IdentityLink.objects.get(source_table="module_ct_cabinet_leads", source_pk=linked_lead.source_pk)
    assert link.decided_by == "ana.revisora" and str(link.person_id) == person_of(a)
    screenshot(page, "review-list-after-link")

    # Reject every candidate of the other conflict.
    page.click(f"a[href='/review/{rejected_lead.source_pk}/']")
    page.wait_for_load_state("networkidle")
    page.click("input[data-action=none_of_these]")
    page.wait_for_load_state("networkidle")
    assert "rejected" in page.locator("ul.messagelist").inner_text()
    assert listed(page) == []
    assert page.locator("#review-empty").is_visible()
    assert backlog_shown(page) == before - 1  # rejected, not linked: still in the red KPI
    screenshot(page, "review-list-after-none-of-these")

    # Later the recovery jobs run again: the lead is tried, and never linked to a rejected person.
    make_due()
    recover()
    assert not IdentityLink.objects.filter(source_pk=rejected_lead.source_pk).exists()
    page.reload()
    assert rejected_lead.source_pk not in listed(page) and backlog_shown(page) == before - 1
    page.goto(f"{live_server.url}/review/{rejected_lead.source_pk}/")
    assert page.locator("#no-candidates").is_visible()
    assert page.locator("#rejected li").count() == 2
    assert IdentityJudgement.objects.filter(source_pk=rejected_lead.source_pk, verdict="not_this_person",
                                            decided_by_name="ana.revisora").count() == 2
    assert {str(p) for p in IdentityJudgement.objects.filter(source_pk=rejected_lead.source_pk)
            .values_list("person_id", flat=True)} == {person_of(c), person_of(d)}
    screenshot(page, "review-lead-rejected-after-recovery")


def test_second_reviewer_with_a_stale_page_gets_a_clear_message(page, login, live_server, chromium):
    lead, a, b = conflict(days_ago=2)
    drivers_index_refresh()
    recover()
    for name in ("ana.revisora", "bob.revisor"):
        user = get_user_model().objects.create_user(name, password=PASSWORD, is_staff=True)
        user.groups.add(Group.objects.get(name=REVIEWER_GROUP))
    # Bob opens the lead first, in his own browser.
    bob_context = chromium.new_context(viewport={"width": 1366, "height": 768})
    bob = bob_context.new_page()
    try:
        login(bob, "bob.revisor", PASSWORD, next_url=f"/review/{lead.source_pk}/")
        # Ana links it meanwhile.
        login(page, "ana.revisora", PASSWORD, next_url=f"/review/{lead.source_pk}/")
        page.click(f"input[data-action=link][data-person-key='{person_of(a)}']")
        page.wait_for_load_state("networkidle")
        # Bob, on his stale page, links the other candidate.
        bob.click(f"input[data-action=link][data-person-key='{person_of(b)}']")
        bob.wait_for_load_state("networkidle")
        message = bob.locator("ul.messagelist").inner_text()
        assert "already linked" in message and "ana.revisora" in message and "not applied" in message
        assert bob.locator("#already-linked").is_visible()
        screenshot(bob, "review-lead-second-reviewer")
    finally:
        bob_context.close()
    links = IdentityLink.objects.filter(source_table="module_ct_cabinet_leads", source_pk=lead.source_pk)
    assert [str(link.person_id) for link in links] == [person_of(a)]
