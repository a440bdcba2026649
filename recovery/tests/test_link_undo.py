"""Undoing a wrong lead link (identity.linking.lead_unlink through recovery.review.undo.link_undo, the audit
verdict and the link_undo command): the history row, the judgement, the unmatched row, the queue, the origin,
the next automatic run, the guardrails and the daily metrics, refusals, races and the command's dry run."""

import json
import threading
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.urls import reverse
from django.utils import timezone

from identity import linking
from identity.index import drivers_index_refresh
from identity.models import (
    CabinetLead,
    IdentityJudgement,
    IdentityLink,
    IdentityLinkHistory,
    IdentityOrigin,
    IdentityUnmatched,
)
from identity.tests.factories import lima_today, link_lead, make_lead, make_person
from recovery.guardrails import guardrails_run_all
from recovery.models import AuditItem, IdentityMatchingJob
from recovery.review.audit import audit_sample, audit_verdict_record
from recovery.review.undo import link_undo
from recovery.sql_views import KpiRedBacklog, KpiRedRecoveryMetricsDaily
from recovery.tests.factories import (
    LEADS,
    assert_nothing_half_written,
    backlog,
    queue_rows,
    recover,
    reviewer,
    snapshot,
    twin,
)

pytestmark = pytest.mark.django_db
REASON = "DNI distinto en RENIEC: es su hermano"


def _linked_twins(days_ago=(9, 4)):
    """One driver and a lead per `days_ago` with the driver's own name, mobile and DNI, each linked to
    the driver's person by the recovery jobs (the leads' evidence, rule and score are the pipeline's)."""
    driver, first = twin(days_ago=days_ago[0])
    same = {f: getattr(first, f) for f in ("first_name", "last_name", "phone", "document", "email", "birth_date")}
    leads = [first, *(make_lead(days_ago=d, **same) for d in days_ago[1:])]
    drivers_index_refresh()
    recover()
    links = [IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk) for lead in leads]
    assert {link.decided_by for link in links} == {"system"} and len({link.person_id for link in links}) == 1
    return driver, leads, links


def _days() -> dict:
    return {d.metric_date: (d.backlog_start, d.new_backlog_in, d.matched_out, d.backlog_end)
            for d in KpiRedRecoveryMetricsDaily.objects.order_by("metric_date")}


def _assert_green_and_adding_up() -> None:
    """Every guardrail passes; every day's end is its start plus what came in minus what was matched, each
    day starts where the day before ended, and today's end is the backlog view."""
    assert [r.name for r in guardrails_run_all() if not r.ok] == []
    days = list(KpiRedRecoveryMetricsDaily.objects.order_by("metric_date"))
    assert days and all(d.backlog_end == d.backlog_start + d.new_backlog_in - d.matched_out for d in days)
    assert all(b.backlog_start == a.backlog_end for a, b in zip(days, days[1:]))
    assert days[-1].metric_date == lima_today()
    assert days[-1].backlog_end == KpiRedBacklog.objects.count() == len(backlog())
    assert_nothing_half_written()


def test_undoing_a_link_returns_the_lead_and_keeps_every_guardrail_green_and_the_days_adding_up(ana):
    _, (first, second), (link, _) = _linked_twins()
    person = str(link.person_id)
    assert IdentityOrigin.objects.get(person_id=person).origin_source_id == first.source_pk
    _assert_green_and_adding_up()
    before = _days()

    outcome = link_undo(source_pk=first.source_pk, user=ana, reason=REASON, undone_via="command")

    assert outcome.undone and outcome.person_key == person and outcome.undone_by == "ana.revisora"
    assert "undone by ana.revisora" in outcome.message and "back in the queue" in outcome.message
    # The link is gone and kept, with who, when and why.
    assert not IdentityLink.objects.filter(source_table=LEADS, source_pk=first.source_pk).exists()
    history = IdentityLinkHistory.objects.get(pk=outcome.history_id)
    assert (history.source_pk, str(history.person_id), history.undone_by, history.undone_by_name, history.reason,
            history.undone_via, history.audit_item_id) == \
        (first.source_pk, person, ana, "ana.revisora", REASON, "command", None)
    assert (history.match_rule, history.match_score, history.confidence_level, history.evidence,
            history.rule_version, history.linked_at, history.decided_by) == \
        (link.match_rule, link.match_score, link.confidence_level, link.evidence, link.rule_version,
         link.linked_at, "system")
    assert abs((timezone.now() - history.undone_at).total_seconds()) < 60
    # A negative judgement in the reviewer's name.
    judgement = IdentityJudgement.objects.get(source_pk=first.source_pk)
    assert (str(judgement.person_id), judgement.verdict, judgement.decided_by, judgement.note) == \
        (person, "not_this_person", ana, REASON)
    # Unmatched again, with the matcher's reason now that the person is excluded.
    unmatched = IdentityUnmatched.objects.get(source_pk=first.source_pk)
    assert unmatched.status == "open" and unmatched.reason_code == outcome.matcher_outcome != "link"
    assert all(c.get("excluded_by_judgement") for c in unmatched.details.get("candidates", [])
               if c["person_key"] == person)
    # Back in the queue, the backlog and the tracking table.
    row = queue_rows()[first.source_pk]
    assert (row.status, row.matched_person_id, row.matched_at, row.fail_reason) == ("pending", None, None, None)
    assert first.source_pk in backlog()
    job = IdentityMatchingJob.objects.get(source_id=first.source_pk)
    assert (job.status, job.matched_person_id, job.attempt_count) == ("pending", None, 1)
    # The origin moves to the person's next earliest lead.
    assert outcome.origin_source_id == second.source_pk
    assert IdentityOrigin.objects.get(person_id=person).origin_source_id == second.source_pk
    # The days before today read as they were reported; today the lead came back in.
    after = _days()
    today = lima_today()
    assert {d: v for d, v in after.items() if d != today} == {d: v for d, v in before.items() if d != today}
    start, came_in, out, end = before[today]
    assert after[today] == (start, came_in + 1, out, end + 1)
    _assert_green_and_adding_up()

    # The next automatic run tries the lead again and never links it to that person.
    recover()
    assert not IdentityLink.objects.filter(source_table=LEADS, source_pk=first.source_pk).exists()
    row = queue_rows()[first.source_pk]
    assert (row.status, row.attempts, row.fail_reason) == ("failed", 2, outcome.matcher_outcome)
    assert IdentityMatchingJob.objects.get(source_id=first.source_pk).status == "failed"
    _assert_green_and_adding_up()

    # Undoing the person's last lead link takes the origin away.
    last = link_undo(source_pk=second.source_pk, user=ana, reason=REASON, undone_via="command")
    assert last.undone and last.origin_source_id is None
    assert not IdentityOrigin.objects.filter(person_id=person).exists()
    assert backlog() >= {first.source_pk, second.source_pk}
    _assert_green_and_adding_up()


@pytest.mark.django_db(transaction=True)
def test_an_undone_lead_linked_again_leaves_the_backlog_again_and_the_days_still_add_up():
    # Transactional: each step commits with its own now(), as in production (link, undo, link, undo).
    ana = reviewer("ana.revisora")
    _, (lead,), (link,) = _linked_twins(days_ago=(6,))
    link_undo(source_pk=lead.source_pk, user=ana, reason=REASON, undone_via="command")
    other = make_person()
    # A reviewer links it to the right person; later that link is undone too.
    linking.leads_link(links=[linking.LeadLink(lead.source_pk, str(other.pk), "manual_review", None, "manual", {},
                                               "test")], decided_by="luis.revisor")
    recover()  # the seed marks the queue row matched with that link
    assert queue_rows()[lead.source_pk].status == "matched"
    _assert_green_and_adding_up()
    today = lima_today()
    assert _days()[today][1:3] == (1, 2)  # in once (the undo), out twice (both links)
    link_undo(source_pk=lead.source_pk, user=ana, reason="tampoco", undone_via="command")
    assert _days()[today][1:3] == (2, 2)
    assert IdentityLinkHistory.objects.filter(source_pk=lead.source_pk).count() == 2
    _assert_green_and_adding_up()


def test_refused_when_the_link_is_gone_or_names_someone_else_and_nothing_is_written(ana):
    _, (lead,), (link,) = _linked_twins(days_ago=(3,))
    assert link_undo(source_pk=lead.source_pk, user=ana, reason=REASON, undone_via="command").undone
    before = (snapshot(), IdentityLinkHistory.objects.count(), IdentityJudgement.objects.count())

    again = link_undo(source_pk=lead.source_pk, user=ana, reason=REASON, undone_via="command")
    assert again.status == "not_linked" and f"Lead {lead.source_pk} has no link" in again.message
    stale = link_undo(source_pk=lead.source_pk, person_key=str(link.person_id), user=ana, reason=REASON,
                      undone_via="command")
    assert stale.status == "not_linked" and "has no link now" in stale.message
    assert (snapshot(), IdentityLinkHistory.objects.count(), IdentityJudgement.objects.count()) == before

    # Linked to someone else since: undoing the old pair is refused, the new link stays.
    other = make_person()
    link_lead(lead, other, decided_by="luis.revisor")
    relinked = link_undo(source_pk=lead.source_pk, person_key=str(link.person_id), user=ana, reason=REASON,
                         undone_via="command")
    assert relinked.status == "not_linked" and f"is linked to person {other.pk} now" in relinked.message
    assert IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk).person_id == other.pk
    assert IdentityLinkHistory.objects.count() == 1


def test_only_a_person_with_the_review_permission_undoes_a_link(django_user_model):
    _, (lead,), (link,) = _linked_twins(days_ago=(3,))
    clerk = django_user_model.objects.create_user("clerk", password="x-lima-2026", is_staff=True)
    refused = link_undo(source_pk=lead.source_pk, user=clerk, reason=REASON, undone_via="command")
    assert refused.status == "forbidden" and "clerk may not undo links" in refused.message
    assert link_undo(source_pk=lead.source_pk, user=None, reason=REASON, undone_via="command").status == "forbidden"
    system = reviewer("system")
    with pytest.raises(ValueError, match="only a person can undo a link"):
        linking.lead_unlink(source_pk=lead.source_pk, person_key=str(link.person_id), user=system, reason=REASON,
                            undone_via="command")
    with pytest.raises(ValueError, match="only a person"):
        linking.lead_unlink(source_pk=lead.source_pk, person_key=str(link.person_id), user=None, reason=REASON,
                            undone_via="command")
    assert IdentityLink.objects.filter(pk=link.pk).exists() and not IdentityLinkHistory.objects.exists()


def test_not_the_same_person_on_an_audit_item_undoes_the_link_and_the_screen_says_so(client, ana):
    _, (lead,), (link,) = _linked_twins(days_ago=(5,))
    audit_sample(seed="lima")
    item = AuditItem.objects.get(source_pk=lead.source_pk)
    client.force_login(ana)
    url = reverse("review:audit", args=[item.pk])
    response = client.post(url, {"verdict": "not_same", "note": "otro DNI"}, follow=True)
    text = response.content.decode()
    assert "Answer recorded: \u201cNot the same person\u201d" in text and "undone by ana.revisora" in text
    history = IdentityLinkHistory.objects.get(source_pk=lead.source_pk)
    assert (history.audit_item_id, history.undone_via, history.reason) == \
        (item.pk, "audit", f"audit item {item.pk}: not the same person (otro DNI)")
    assert lead.source_pk in backlog() and queue_rows()[lead.source_pk].status == "pending"
    html = client.get(url).content.decode()
    assert 'id="audit-undone"' in html and "The link was undone by ana.revisora" in html
    for hidden in (link.match_rule, "score", "evidence"):
        assert hidden not in html.lower()
    _assert_green_and_adding_up()


def test_a_verdict_on_a_link_undone_meanwhile_is_recorded_and_says_nothing_was_undone(ana):
    _, (lead,), _ = _linked_twins(days_ago=(5,))
    audit_sample(seed="lima")
    item = AuditItem.objects.get(source_pk=lead.source_pk)
    link_undo(source_pk=lead.source_pk, user=ana, reason=REASON, undone_via="command")
    luis = reviewer("luis.revisor")

    outcome = audit_verdict_record(item_id=item.pk, verdict="not_same", user=luis)

    assert outcome.applied and not outcome.link_undone and outcome.undo.status == "not_linked"
    assert "The link was not undone" in outcome.message
    assert IdentityLinkHistory.objects.count() == 1
    item.refresh_from_db()
    assert (item.verdict, item.decided_by_name) == ("not_same", "luis.revisor")
    # A same-person verdict never touches a link.
    _, (kept,), (kept_link,) = _linked_twins(days_ago=(4,))
    audit_sample(seed="cusco")
    kept_item = AuditItem.objects.get(source_pk=kept.source_pk)
    assert audit_verdict_record(item_id=kept_item.pk, verdict="same", user=luis).undo is None
    assert IdentityLink.objects.filter(pk=kept_link.pk).exists()


def _race(monkeypatch, calls: dict) -> dict:
    """Run `calls` (name -> function) at the same moment on their own connections; the judgement write
    (after the link's removal, before the commit) is slowed down to widen the window."""
    judgement_record = linking.judgement_record

    def slow_judgement(**kwargs):
        time.sleep(0.5)
        return judgement_record(**kwargs)

    monkeypatch.setattr(linking, "judgement_record", slow_judgement)
    barrier = threading.Barrier(len(calls))
    outcomes = {}

    def run(name):
        try:
            barrier.wait()
            outcomes[name] = calls[name]()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.django_db(transaction=True)
def test_two_undos_at_the_same_moment_undo_once(monkeypatch):
    _, (lead,), _ = _linked_twins(days_ago=(3,))
    users = {name: reviewer(name) for name in ("ana.revisora", "bob.revisor")}
    outcomes = _race(monkeypatch, {name: (lambda u=user: link_undo(
        source_pk=lead.source_pk, user=u, reason=REASON, undone_via="command")) for name, user in users.items()})
    assert sorted(o.status for o in outcomes.values()) == ["not_linked", "undone"]
    winner = next(name for name, o in outcomes.items() if o.undone)
    assert IdentityLinkHistory.objects.get().undone_by_name == winner
    assert IdentityJudgement.objects.filter(source_pk=lead.source_pk).count() == 1
    _assert_green_and_adding_up()


@pytest.mark.django_db(transaction=True)
def test_two_not_same_verdicts_at_the_same_moment_undo_once(monkeypatch):
    _, (lead,), _ = _linked_twins(days_ago=(3,))
    audit_sample(seed="x")
    item = AuditItem.objects.get(source_pk=lead.source_pk)
    users = {name: reviewer(name) for name in ("ana.revisora", "bob.revisor")}
    outcomes = _race(monkeypatch, {name: (lambda u=user: audit_verdict_record(
        item_id=item.pk, verdict="not_same", user=u)) for name, user in users.items()})
    assert sorted(o.status for o in outcomes.values()) == ["already_decided", "recorded"]
    winner = next(name for name, o in outcomes.items() if o.applied)
    assert outcomes[winner].link_undone
    assert IdentityLinkHistory.objects.get().undone_by_name == winner
    _assert_green_and_adding_up()


def _command(*args) -> tuple[str, dict | None]:
    out = StringIO()
    call_command("link_undo", *args, stdout=out)
    text = out.getvalue()
    return text, json.loads(text) if "--json" in args else None


def test_the_command_undoes_in_a_reviewers_name_and_its_dry_run_writes_nothing(ana):
    _, (lead,), (link,) = _linked_twins(days_ago=(3,))
    before = (snapshot(), IdentityLinkHistory.objects.count(), IdentityJudgement.objects.count(), _days())

    _, dry = _command(lead.source_pk, "--by", "ana.revisora", "--reason", REASON, "--dry-run", "--json")
    assert dry["dry_run"] is True and dry["undone"] is True and dry["person_key"] == str(link.person_id)
    assert (snapshot(), IdentityLinkHistory.objects.count(), IdentityJudgement.objects.count(), _days()) == before

    text, _ = _command(lead.source_pk, "--by", "ana.revisora", "--reason", REASON)
    assert f"Link of lead {lead.source_pk} to person {link.person_id} undone by ana.revisora" in text
    assert IdentityLinkHistory.objects.get().undone_via == "command"
    assert lead.source_pk in backlog()

    out = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("link_undo", lead.source_pk, "--by", "ana.revisora", "--reason", REASON, stdout=out)
    assert exited.value.code == 1 and f"Lead {lead.source_pk} has no link: nothing to undo." in out.getvalue()


def test_the_command_names_a_reviewer_and_a_reason(django_user_model):
    _, (lead,), (link,) = _linked_twins(days_ago=(3,))
    django_user_model.objects.create_user("clerk", password="x-lima-2026", is_staff=True)
    for args, expected in (
        (["--by", "nadie", "--reason", REASON], "there is no user 'nadie'"),
        (["--by", "clerk", "--reason", REASON], "clerk may not undo links"),
    ):
        with pytest.raises(CommandError, match=expected) as error:
            _command(lead.source_pk, *args)
        assert error.value.returncode == 2
    reviewer("ana.revisora")
    with pytest.raises(CommandError, match="--reason must say why") as error:
        _command(lead.source_pk, "--by", "ana.revisora", "--reason", "  ")
    assert error.value.returncode == 2
    assert IdentityLink.objects.filter(pk=link.pk).exists()
    assert CabinetLead.objects.filter(source_pk=lead.source_pk).exists()
