"""recovery.review.decide: each decision and what it drains, later recovery runs respecting the
judgements, and two reviewers on one lead."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.urls import reverse
from django.utils import timezone

from identity.index import drivers_index_refresh
from identity.matching import RULE_VERSION
from identity.models import IdentityJudgement, IdentityLink, IdentityOrigin, IdentityUnmatched
from recovery.models import IdentityMatchingJob, KpiRedRecoveryQueue
from recovery.review.decide import review_decide
from recovery.review.listing import review_queue
from recovery.review.rules import Action
from recovery.review.screen import review_lead
from recovery.tests.factories import (
    LEADS,
    backlog,
    conflict,
    listed,
    make_due,
    matched_out_today,
    person_of,
    recover,
    reviewer,
    weak,
)

pytestmark = pytest.mark.django_db


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
def test_two_reviewers_at_the_same_moment_serialize_on_the_lead(slow_decision_checks):
    lead, a, b = conflict()
    drivers_index_refresh()
    recover()
    ana, bob = reviewer("ana.revisora"), reviewer("bob.revisor")
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
