"""The review workflow on a real PostgreSQL: the list's order, each decision and what it drains,
later recovery runs respecting the judgements, the two-reviewer race, and who may do what."""

import itertools
import threading
import time
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connections
from django.urls import reverse
from django.utils import timezone

from identity.domain import milestone_total
from identity.index import drivers_index_refresh
from identity.matching import RULE_VERSION
from identity.models import IdentityJudgement, IdentityLink, IdentityOrigin, IdentityUnmatched
from identity.tests.factories import lima_today, make_driver, make_lead, make_trips
from recovery.jobs.recover import queue_recover
from recovery.models import IdentityMatchingJob, KpiRedRecoveryQueue
from recovery.queue import queue_seed
from recovery.review import decide as decide_module
from recovery.review.decide import review_decide
from recovery.review.groups import reviewer_group_ensure
from recovery.review.listing import review_queue
from recovery.review.rules import REVIEWER_GROUP, Action
from recovery.review.screen import review_lead
from recovery.sql_views import KpiRedBacklog, KpiRedRecoveryMetricsDaily

pytestmark = pytest.mark.django_db

LEADS = "module_ct_cabinet_leads"
_n = itertools.count(1)
GIVEN = ("Wilmer", "Yessenia", "Teófilo", "Maritza", "Edgar", "Nélida", "Abdón", "Filomena")
RARE = ("Ccahuana", "Huillca", "Quillahuamán", "Ccorimanya", "Añamuro", "Callañaupa", "Chambilla", "Soncco",
        "Tintaya", "Arotinco", "Cjuro", "Achahui", "Pumacahua", "Sullca", "Huaylla", "Chuquimia")


def _blank(**fields) -> dict:
    """Only what is given: every other identifier empty, so nothing else agrees by accident."""
    return {"email": None, "birth_date": None, "plate": None, "document": None, "phone": None, **fields}


def conflict(*, days_ago: int = 2, park: str = "park-lima-norte", external_id: str | None = None):
    """Two drivers (two persons: different DNIs, two parks) with the lead's full name and a shared
    mobile: both strong, neither ahead. Returns (lead, driver_a, driver_b)."""
    n = next(_n)
    name = {"first_name": GIVEN[n % len(GIVEN)], "last_name": f"{RARE[n % 16]} {RARE[(n * 5 + 3) % 16]}"}
    phone = f"94{n:07d}"
    a = make_driver(**_blank(**name, phone=phone, document=f"{41_000_000 + n:08d}"), license_number=None,
                    park_id="park-lima-norte")
    b = make_driver(**_blank(**name, phone=phone, document=f"{42_000_000 + n:08d}"), license_number=None,
                    park_id="park-lima-sur")
    lead = make_lead(days_ago=days_ago, park_id=park, external_id=external_id, **_blank(**name, phone=phone))
    return lead, a, b


def weak(*, days_ago: int = 3, park: str = "park-lima-norte"):
    """A lead whose mobile a driver of another name carries (a recycled number): WEAK_MATCH_ONLY."""
    n = next(_n)
    phone = f"93{n:07d}"
    driver = make_driver(**_blank(first_name="Rosa", last_name="Flores Huamán", phone=phone,
                                document=f"{43_000_000 + n:08d}"), license_number=None)
    lead = make_lead(days_ago=days_ago, park_id=park, **_blank(first_name="Pedro", last_name="Ramos Soto", phone=phone))
    return lead, driver


def person_of(driver) -> str:
    return str(IdentityLink.objects.get(source_table="drivers", source_pk=driver.driver_id).person_id)


def recover() -> None:
    """The jobs as scheduled: seed the queue from the backlog, then recover."""
    queue_seed()
    queue_recover()


def make_due() -> None:
    """Time passes: every failed queue row's backoff is over."""
    KpiRedRecoveryQueue.objects.filter(status="failed").update(next_attempt_at=timezone.now() - timedelta(hours=1))


def listed() -> list[str]:
    return [row.source_pk for row in review_queue(limit=500).rows]


def backlog() -> set[str]:
    return set(KpiRedBacklog.objects.values_list("lead_source_pk", flat=True))


def matched_out_today() -> int:
    return KpiRedRecoveryMetricsDaily.objects.get(metric_date=lima_today()).matched_out


@pytest.fixture
def ana(db):
    return reviewer("ana.revisora")


def reviewer(username: str):
    user = get_user_model().objects.create_user(username, password="lima-review-2026", is_staff=True)
    user.groups.add(Group.objects.get(name=REVIEWER_GROUP))
    return user


# --- the list -----------------------------------------------------------------------------


def test_recovery_sends_conflicts_and_weak_matches_to_the_review_list():
    lead_c, a, b = conflict()
    lead_w, _ = weak()
    drivers_index_refresh()
    recover()
    reasons = dict(KpiRedRecoveryQueue.objects.values_list("lead_source_pk", "fail_reason"))
    assert reasons == {lead_c.source_pk: "CONFLICT_MULTIPLE_CANDIDATES", lead_w.source_pk: "WEAK_MATCH_ONLY"}
    rows = {row.source_pk: row for row in review_queue().rows}
    assert set(rows) == {lead_c.source_pk, lead_w.source_pk}
    assert rows[lead_c.source_pk].candidates == 2 and rows[lead_w.source_pk].candidates == 1
    assert review_queue(reason="WEAK_MATCH_ONLY").total == 1


def test_list_is_high_risk_first_then_money_at_stake():
    low, *_ = conflict(days_ago=60)
    medium_idle, *_ = conflict(days_ago=20)
    medium_earning, driver, _ = conflict(days_ago=25)
    high, *_ = conflict(days_ago=3)
    # The candidate drove 6 trips in the lead's 14-day window: milestones 1 and 5 reached.
    make_trips(driver, start=medium_earning.lead_date + timedelta(days=2), counts=[2, 2, 2])
    # Trips after the window earn nothing for this lead.
    make_trips(driver, {medium_earning.lead_date + timedelta(days=15): 30})
    drivers_index_refresh()
    recover()
    rows = review_queue().rows
    assert [r.source_pk for r in rows] == [high.source_pk, medium_earning.source_pk, medium_idle.source_pk,
                                           low.source_pk]
    by_pk = {r.source_pk: r for r in rows}
    amounts = milestone_total(), Decimal("60.00"), Decimal("0.00"), Decimal("0.00")
    assert [by_pk[pk].at_stake for pk in (high.source_pk, medium_earning.source_pk, medium_idle.source_pk,
                                          low.source_pk)] == list(amounts)
    assert milestone_total() == Decimal("160.00")
    assert [r.risk_level for r in rows] == ["high", "medium", "medium", "low"]
    assert review_queue(risk="medium").total == 2
    assert review_queue(limit=2, offset=2).total == 4
    assert [r.source_pk for r in review_queue(limit=2, offset=2).rows] == [medium_idle.source_pk, low.source_pk]


def test_review_screen_puts_the_lead_beside_each_candidate_field_by_field():
    lead, a, b = conflict(days_ago=4)
    make_trips(a, {lima_today() - timedelta(days=1): 3, lima_today() - timedelta(days=20): 9})
    drivers_index_refresh()
    recover()
    screen = review_lead(lead.source_pk)
    assert screen.in_review and screen.reason_code == "CONFLICT_MULTIPLE_CANDIDATES"
    assert screen.rule_version == RULE_VERSION and screen.score is not None
    assert {c.person_key for c in screen.candidates} == {person_of(a), person_of(b)}
    first = next(c for c in screen.candidates if c.person_key == person_of(a))
    rows = {row.field: row for row in first.rows}
    assert rows["phone"].cells[0].status == "agree" and rows["phone"].level == "exact"
    assert rows["name"].cells[0].status == "agree"
    assert rows["document"].cells[0].status == "missing"  # the lead has no DNI
    assert rows["park_id"].cells[0].value == "park-lima-norte"
    assert first.drivers[0].trips_last_14d == 3 and first.drivers[0].park_id == "park-lima-norte"
    # A disagreeing value is marked as such.
    lead.document = "40000999"
    lead.save()
    screen = review_lead(lead.source_pk)
    doc = {row.field: row for row in screen.candidates[0].rows}["document"]
    assert doc.cells[0].status == "disagree" and doc.level == "different"


# --- decisions ----------------------------------------------------------------------------


def test_link_decision_drains_the_lead_like_an_automatic_match(ana):
    lead, a, b = conflict()
    drivers_index_refresh()
    recover()
    assert lead.source_pk in backlog() and lead.source_pk in listed()
    before = matched_out_today()

    outcome = review_decide(source_pk=lead.source_pk, action=Action.LINK, person_key=person_of(a), user=ana)

    assert outcome.status == "linked"
    link = IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk)
    assert (str(link.person_id), link.decided_by, link.confidence_level) == (person_of(a), "ana.revisora", "manual")
    assert link.match_rule == "manual_review" and link.rule_version == RULE_VERSION
    assert link.evidence["review"]["decided_by"] == "ana.revisora" and link.evidence["candidates"]
    assert IdentityOrigin.objects.get(person_id=person_of(a)).origin_source_id == lead.source_pk
    row = KpiRedRecoveryQueue.objects.get(lead_source_pk=lead.source_pk)
    assert (row.status, str(row.matched_person_id), row.fail_reason) == ("matched", person_of(a), None)
    assert row.matched_at == link.linked_at
    job = IdentityMatchingJob.objects.get(source_id=lead.source_pk)
    assert job.status == "matched" and str(job.matched_person_id) == person_of(a)
    assert IdentityUnmatched.objects.get(source_pk=lead.source_pk).status == "resolved"
    judgement = IdentityJudgement.objects.get(source_pk=lead.source_pk)
    assert (judgement.verdict, judgement.decided_by, str(judgement.person_id)) == ("link", ana, person_of(a))
    assert judgement.decided_at is not None
    assert lead.source_pk not in listed()
    assert lead.source_pk not in backlog()
    assert matched_out_today() == before + 1
    # The next recovery run leaves the reviewer's link alone.
    make_due()
    recover()
    assert str(IdentityLink.objects.get(source_pk=lead.source_pk).person_id) == person_of(a)


def test_not_this_person_is_respected_by_later_recovery_runs(ana):
    lead, a, b = conflict()
    drivers_index_refresh()
    recover()

    outcome = review_decide(source_pk=lead.source_pk, action=Action.NOT_THIS_PERSON, person_key=person_of(a), user=ana)

    assert outcome.status == "rejected"
    assert IdentityJudgement.objects.filter(source_pk=lead.source_pk, verdict="not_this_person",
                                            person_id=person_of(a), decided_by_name="ana.revisora").count() == 1
    row = review_queue().rows[0]
    assert row.source_pk == lead.source_pk and row.candidates == 1  # B still stands
    make_due()
    recover()
    # Without A, B is a clear match for the matcher: linked automatically. Never A.
    link = IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk)
    assert str(link.person_id) == person_of(b) and link.decided_by == "system"
    assert lead.source_pk not in listed()


def test_none_of_these_rejects_every_candidate_and_recovery_never_links_them(ana):
    lead, a, b = conflict()
    other, *_ = conflict()
    drivers_index_refresh()
    recover()

    outcome = review_decide(source_pk=lead.source_pk, action=Action.NONE_OF_THESE, user=ana)

    assert outcome.status == "rejected" and sorted(outcome.person_keys) == sorted([person_of(a), person_of(b)])
    rejected = set(IdentityJudgement.objects.filter(source_pk=lead.source_pk, verdict="not_this_person")
                   .values_list("person_id", flat=True))
    assert {str(p) for p in rejected} == {person_of(a), person_of(b)}
    assert listed() == [other.source_pk]
    make_due()
    recover()
    assert not IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk).exists()
    assert KpiRedRecoveryQueue.objects.get(lead_source_pk=lead.source_pk).fail_reason == "NO_CANDIDATES"
    assert lead.source_pk in backlog() and lead.source_pk not in listed()


def test_rejecting_a_weak_match_takes_it_off_the_list(ana):
    lead, driver = weak()
    drivers_index_refresh()
    recover()
    assert listed() == [lead.source_pk]
    review_decide(source_pk=lead.source_pk, action=Action.NOT_THIS_PERSON, person_key=person_of(driver), user=ana)
    assert listed() == []
    make_due()
    recover()
    assert not IdentityLink.objects.filter(source_pk=lead.source_pk).exists()


def test_defer_keeps_the_lead_listed_below_the_others(ana):
    first, *_ = conflict(days_ago=1)
    second, *_ = conflict(days_ago=2)
    drivers_index_refresh()
    recover()
    assert listed() == [second.source_pk, first.source_pk]  # same money: the window closing first leads

    outcome = review_decide(source_pk=second.source_pk, action=Action.DEFER, user=ana, note="call the park")

    assert outcome.status == "deferred"
    assert listed() == [first.source_pk, second.source_pk]
    row = review_queue().rows[1]
    assert row.deferred_by == "ana.revisora"
    assert timedelta(hours=23) < row.deferred_until - timezone.now() <= timedelta(hours=24)
    judgement = IdentityJudgement.objects.get(source_pk=second.source_pk)
    assert (judgement.verdict, judgement.person_id, judgement.note) == ("defer", None, "call the park")
    assert review_lead(second.source_pk).deferred_until == row.deferred_until
    assert not IdentityLink.objects.filter(source_pk=second.source_pk).exists()
    # After the deferral runs out the lead is back in its place.
    IdentityJudgement.objects.filter(pk=judgement.pk).update(decided_at=timezone.now() - timedelta(hours=25))
    assert listed() == [second.source_pk, first.source_pk]


def test_a_person_not_among_the_candidates_cannot_be_linked(ana):
    lead, *_ = conflict()
    _, stranger_driver = weak()
    drivers_index_refresh()
    recover()
    outcome = review_decide(source_pk=lead.source_pk, action=Action.LINK, person_key=person_of(stranger_driver),
                            user=ana)
    assert outcome.status == "invalid"
    assert not IdentityLink.objects.filter(source_pk=lead.source_pk).exists()


# --- two reviewers, one lead --------------------------------------------------------------


def test_second_decision_with_a_stale_page_changes_nothing_and_says_why(client, ana):
    lead, a, b = conflict()
    drivers_index_refresh()
    recover()
    bob = reviewer("bob.revisor")
    seen = review_lead(lead.source_pk).last_judgement_id  # both opened the page now
    url = reverse("review:lead", args=[lead.source_pk])

    client.force_login(ana)
    response = client.post(url, {"action": "link", "person_key": person_of(a), "seen": seen})
    assert response.status_code == 302 and response.url == reverse("review:list")

    client.force_login(bob)
    response = client.post(url, {"action": "link", "person_key": person_of(b), "seen": seen}, follow=True)
    text = response.content.decode()
    assert "already linked" in text and "ana.revisora" in text and "Your decision was not applied" in text
    links = IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk)
    assert [str(link.person_id) for link in links] == [person_of(a)]
    assert IdentityJudgement.objects.filter(source_pk=lead.source_pk).count() == 1

    # A rejection made after the page was drawn also stops a stale decision.
    other, c, d = conflict()
    drivers_index_refresh()
    recover()
    seen = review_lead(other.source_pk).last_judgement_id
    review_decide(source_pk=other.source_pk, action=Action.NOT_THIS_PERSON, person_key=person_of(c), user=ana,
                  seen=seen)
    outcome = review_decide(source_pk=other.source_pk, action=Action.LINK, person_key=person_of(d), user=bob,
                            seen=seen)
    assert outcome.status == "stale" and "ana.revisora" in outcome.message
    assert not IdentityLink.objects.filter(source_pk=other.source_pk).exists()


@pytest.mark.django_db(transaction=True)
def test_two_reviewers_at_the_same_moment_serialize_on_the_lead(monkeypatch):
    lead, a, b = conflict()
    drivers_index_refresh()
    recover()
    ana, bob = reviewer("ana.revisora"), reviewer("bob.revisor")
    # Widen the window between the checks and the writes: without the lead's row lock both
    # decisions would pass the checks and both would be applied.
    explain = decide_module.lead_explain

    def slow_explain(source_pk):
        result = explain(source_pk)
        time.sleep(0.5)
        return result

    monkeypatch.setattr(decide_module, "lead_explain", slow_explain)
    barrier = threading.Barrier(2)
    outcomes = {}

    def decide(user, action):
        try:
            barrier.wait()
            outcomes[user.username] = review_decide(source_pk=lead.source_pk, action=action, person_key=person_of(a),
                                                    user=user, seen=0)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=decide, args=(ana, Action.LINK)),
               threading.Thread(target=decide, args=(bob, Action.NOT_THIS_PERSON))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    statuses = sorted(o.status for o in outcomes.values())
    assert statuses in (["already_linked", "linked"], ["rejected", "stale"])
    assert IdentityJudgement.objects.filter(source_pk=lead.source_pk).count() == 1
    linked = IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk).exists()
    rejected = IdentityJudgement.objects.filter(source_pk=lead.source_pk, verdict="not_this_person").exists()
    assert linked != rejected


@pytest.mark.django_db(transaction=True)
def test_two_links_at_the_same_moment_make_exactly_one_link(monkeypatch):
    lead, a, b = conflict()
    drivers_index_refresh()
    recover()
    users = {"ana.revisora": (reviewer("ana.revisora"), person_of(a)), "bob.revisor": (reviewer("bob.revisor"),
                                                                                       person_of(b))}
    barrier = threading.Barrier(2)
    outcomes = {}

    def decide(name):
        user, person_key = users[name]
        try:
            barrier.wait()
            outcomes[name] = review_decide(source_pk=lead.source_pk, action=Action.LINK, person_key=person_key,
                                           user=user)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=decide, args=(name,)) for name in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.status for o in outcomes.values()) == ["already_linked", "linked"]
    assert IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk).count() == 1
    loser = next(o for o in outcomes.values() if o.status == "already_linked")
    winner = next(name for name, o in outcomes.items() if o.status == "linked")
    assert winner in loser.message
    assert KpiRedRecoveryQueue.objects.get(lead_source_pk=lead.source_pk).status == "matched"


# --- who may do what ----------------------------------------------------------------------


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
