"""recovery.review.views and groups: who may open the review screens and decide, and the reviewer group."""

from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse

from identity.index import drivers_index_refresh
from identity.matching import RULE_VERSION
from identity.models import IdentityJudgement, IdentityLink
from recovery.review.groups import reviewer_group_ensure
from recovery.review.rules import REVIEWER_GROUP
from recovery.tests.factories import backlog, conflict, person_of, recover

pytestmark = pytest.mark.django_db


def test_anonymous_users_are_sent_to_the_login_page(client):
    lead, *_ = conflict()
    for url in (reverse("review:list"), reverse("review:lead", args=[lead.source_pk])):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login")) and "next=" in response.url
    response = client.post(reverse("review:lead", args=[lead.source_pk]), {"action": "defer"})
    assert response.status_code == 302 and not IdentityJudgement.objects.exists()


def test_staff_without_the_reviewer_group_get_403(client):
    lead, a, _ = conflict()
    drivers_index_refresh()
    recover()
    clerk = get_user_model().objects.create_user("clerk", password="x-lima-2026", is_staff=True)
    client.force_login(clerk)
    assert client.get(reverse("review:list")).status_code == 403
    assert client.get(reverse("review:lead", args=[lead.source_pk])).status_code == 403
    response = client.post(reverse("review:lead", args=[lead.source_pk]),
                           {"action": "link", "person_key": person_of(a)})
    assert response.status_code == 403
    assert not IdentityLink.objects.filter(source_pk=lead.source_pk).exists()


def test_a_reviewer_sees_the_list_and_decides_through_the_screen(client, ana):
    lead, a, _ = conflict()
    drivers_index_refresh()
    recover()
    client.force_login(ana)
    response = client.get(reverse("review:list"))
    text = response.content.decode()
    assert response.status_code == 200 and lead.source_pk in text
    assert f'id="backlog-count">{len(backlog())}<' in text
    response = client.get(reverse("review:lead", args=[lead.source_pk]))
    text = response.content.decode()
    assert response.status_code == 200
    assert RULE_VERSION in text and person_of(a) in text and 'data-status="agree"' in text
    assert lead.phone in text  # staff see personal data in full on the review screen
    response = client.post(reverse("review:lead", args=[lead.source_pk]),
                           {"action": "link", "person_key": person_of(a), "seen": 0}, follow=True)
    assert response.status_code == 200 and "linked to person" in response.content.decode()
    assert IdentityLink.objects.get(source_pk=lead.source_pk).decided_by == "ana.revisora"


def test_any_source_pk_has_a_review_screen(client, ana):
    lead, a, _ = conflict(external_id="CAB/2026 0042")
    drivers_index_refresh()
    recover()
    client.force_login(ana)
    url = reverse("review:lead", args=[lead.source_pk])
    assert client.get(reverse("review:list")).status_code == 200
    assert client.get(url).status_code == 200
    client.post(url, {"action": "link", "person_key": person_of(a), "seen": 0})
    assert IdentityLink.objects.get(source_pk="CAB/2026 0042").decided_by == "ana.revisora"
    assert client.get(reverse("review:lead", args=["no-such-lead"])).status_code == 404


def test_the_reviewer_group_can_review_and_view_and_nothing_else():
    group = Group.objects.get(name=REVIEWER_GROUP)
    codenames = set(group.permissions.values_list("content_type__app_label", "codename"))
    assert ("identity", "review_lead") in codenames
    assert ("identity", "view_identitylink") in codenames and ("recovery", "view_kpiredrecoveryqueue") in codenames
    assert all(c == "review_lead" or c.startswith("view_") for _, c in codenames)
    assert {app for app, _ in codenames} == {"identity", "recovery"}
    # Idempotent: running it again changes nothing.
    reviewer_group_ensure()
    assert set(Group.objects.get(name=REVIEWER_GROUP).permissions.values_list(
        "content_type__app_label", "codename")) == codenames


@pytest.mark.django_db
def test_add_reviewer_command_makes_a_staff_reviewer_with_a_random_password():
    out = StringIO()
    call_command("add_reviewer", "rosa.revisora", stdout=out)
    password = out.getvalue().split("password (shown only now): ")[1].strip()
    user = authenticate(username="rosa.revisora", password=password)
    assert user is not None and user.is_staff and not user.is_superuser
    assert user.has_perm("identity.review_lead")
    assert not user.has_perm("identity.change_identitylink")
    again = StringIO()
    call_command("add_reviewer", "rosa.revisora", stdout=again)
    assert "updated reviewer" in again.getvalue() and "password" not in again.getvalue()
    assert authenticate(username="rosa.revisora", password=password) is not None
