"""The admin: every model browsable, every filter and the searches work, canonical tables read-only,
and a reviewer can look but not touch."""

from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from identity.index import drivers_index_refresh
from identity.models import (
    CabinetLead,
    Driver,
    DriverIndexEntry,
    IdentityLink,
    IdentityOrigin,
    IdentityUnmatched,
    JobRun,
    Person,
)
from identity.resolution import MatchContext, match_model_estimate
from identity.rules import rule_demote
from identity.tests.factories import lima_today, make_claim, make_driver, make_lead, make_trips
from recovery.heartbeat import heartbeat_beat
from recovery.models import AuditItem, CabinetLeadsLimbo, KpiRedBacklog, KpiRedRecoveryQueue
from recovery.review.audit import audit_sample, audit_verdict_record
from recovery.review.decide import review_decide
from recovery.review.listing import review_queue
from recovery.review.rules import REVIEWER_GROUP, Action
from recovery.tests.factories import conflict, person_of, recover, weak

pytestmark = pytest.mark.django_db

APPS = ("identity", "recovery")
# Tables only the services write: no add, change or delete in the admin, for anyone.
READ_ONLY = (
    "identity.Person", "identity.IdentityLink", "identity.IdentityOrigin", "identity.IdentityUnmatched",
    "identity.IdentityJudgement", "identity.JobRun", "identity.DriverIndexEntry", "identity.NameTokenStat",
    "recovery.KpiRedRecoveryQueue", "recovery.IdentityMatchingJob", "recovery.KpiRedBacklog",
    "recovery.IdentityGapAnalysis", "recovery.DriverUnlinkedActivity", "recovery.CabinetFinancial14d",
    "recovery.CabinetLeadsLimbo", "recovery.FunnelAuditWeekly", "recovery.KpiRedRecoveryMetricsDaily",
    "recovery.ClusterHeartbeat", "recovery.AuditItem", "identity.IdentityLinkHistory", "identity.MatchRuleState",
    "identity.DriversIndexCount", "identity.HiresPerDay", "identity.DriverChange",
)


def models():
    return [m for label in APPS for m in apps.get_app_config(label).get_models()]


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def park():
    """A small park where every table and view has rows: a twin the matcher links (with trips and a
    claim), a conflict a reviewer linked, a conflict still open, a weak match, a driver with trips
    and no identity yet, the job runs of all that."""
    twin_driver = make_driver(first_name="Nélida", last_name="Soncco Tintaya", phone="987123456",
                              document="44556677", email=None, birth_date=None, license_number=None)
    twin = make_lead(days_ago=5, first_name="Nélida", last_name="Soncco Tintaya", phone="987 123 456",
                     document="DNI 44.556.677", email=None, birth_date=None)
    make_trips(twin_driver, start=twin.lead_date, counts=[1, 2, 3])
    decided, a, _ = conflict(days_ago=3)
    still_open, *_ = conflict(days_ago=20)
    weak_lead, _ = weak(days_ago=40, park="park-lima-sur")
    # A lead linked automatically that an auditor finds wrong: the link is undone (its history row).
    make_driver(first_name="Teófilo", last_name="Huillca Añamuro", phone="912345678", document="40112233",
                email=None, birth_date=None, license_number=None)
    wrong = make_lead(days_ago=6, first_name="Teófilo", last_name="Huillca Añamuro", phone="912345678",
                      document="40112233", email=None, birth_date=None)
    drivers_index_refresh()
    recover()
    make_claim(twin, milestone=1, status="expected")
    reviewer = get_user_model().objects.create_user("ana.revisora", password="lima-review-2026", is_staff=True)
    reviewer.groups.add(Group.objects.get(name=REVIEWER_GROUP))
    review_decide(source_pk=decided.source_pk, action=Action.LINK, person_key=person_of(a), user=reviewer)
    review_decide(source_pk=still_open.source_pk, action=Action.DEFER, user=reviewer)
    audit_sample(seed="admin")  # the twin's automatic link becomes an audit item, answered
    audit_verdict_record(item_id=AuditItem.objects.get(source_pk=twin.source_pk).pk, verdict="same", user=reviewer)
    assert audit_verdict_record(item_id=AuditItem.objects.get(source_pk=wrong.source_pk).pk, verdict="not_same",
                                user=reviewer).link_undone
    heartbeat_beat(host="ops-1", pid=4242, cluster="ct4")
    match_model_estimate(MatchContext.load())  # a match model (too few pairs here: declared m kept)
    rule_demote(rule="fs_shared_key", reason="families share phones", changed_by="ana.revisora")  # a rule state
    late = make_driver(first_name="Abdón", last_name="Cjuro Sullca")  # not indexed yet: no identity
    make_trips(late, {lima_today(): 4})
    return {"twin": twin, "twin_driver": twin_driver, "decided": decided, "open": still_open, "weak": weak_lead,
            "reviewer": reviewer}


@pytest.fixture
def boss(client):
    user = get_user_model().objects.create_superuser("jefa", "jefa@example.pe", "s3cret-pass-lima")
    client.force_login(user)
    return user


def test_every_model_is_in_the_admin():
    missing = [m._meta.label for m in models() if m not in admin.site._registry]
    assert missing == []


def test_every_changelist_filter_search_and_change_page_renders(client, boss, park):
    for model in models():
        response = client.get(url(model, "changelist"))
        assert response.status_code == 200, model._meta.label
        changelist = response.context["cl"]
        assert changelist.result_count > 0, f"{model._meta.label} has no rows to show"
        # Every choice of every filter.
        for spec in changelist.filter_specs:
            for choice in spec.choices(changelist):
                filtered = client.get(url(model, "changelist") + choice["query_string"])
                assert filtered.status_code == 200, (model._meta.label, choice["query_string"])
        if changelist.search_fields:
            for term in (park["twin"].source_pk, "987 123 456", "not-a-key", str(park["twin_driver"].pk)):
                assert client.get(url(model, "changelist"), {"q": term}).status_code == 200, model._meta.label
        obj = changelist.result_list[0]
        response = client.get(url(model, "change", quote(str(obj.pk))))
        assert response.status_code == 200, model._meta.label


def _found(client, model, term) -> list:
    response = client.get(url(model, "changelist"), {"q": term})
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_search_by_source_pk_person_key_and_normalized_phone_or_document(client, boss, park):
    twin = park["twin"]
    person = IdentityLink.objects.get(source_table="module_ct_cabinet_leads", source_pk=twin.source_pk).person_id
    # The lead was typed "987 123 456" and "DNI 44.556.677": any spelling of the same key finds it.
    for term in ("+51987123456", "987-123-456", "44556677", "DNI 44 556 677"):
        assert [lead.source_pk for lead in _found(client, CabinetLead, term)] == [twin.source_pk], term
    assert [d.driver_id for d in _found(client, Driver, "+51 987 123 456")] == [park["twin_driver"].driver_id]
    assert [d.driver_id for d in _found(client, DriverIndexEntry, "44.556.677")] == [park["twin_driver"].driver_id]
    assert [p.person_key for p in _found(client, Person, str(person))] == [person]
    assert [p.person_key for p in _found(client, Person, "987123456")] == [person]
    links = _found(client, IdentityLink, str(person))
    assert {(link.source_table, link.source_pk) for link in links} == {("module_ct_cabinet_leads", twin.source_pk),
                                                               ("drivers", park["twin_driver"].driver_id)}
    assert {link.source_pk for link in _found(client, IdentityLink, "987123456")} == {twin.source_pk,
                                                                                park["twin_driver"].driver_id}
    assert [o.person_id for o in _found(client, IdentityOrigin, str(person))] == [person]
    assert [r.lead_source_pk for r in _found(client, CabinetLeadsLimbo, "44556677")] == [twin.source_pk]
    assert [r.lead_source_pk for r in _found(client, KpiRedRecoveryQueue, park["open"].source_pk)] == \
        [park["open"].source_pk]
    assert _found(client, CabinetLead, "no-such-thing") == []


def test_filters_narrow_the_lists(client, boss, park):
    rows = _found_filtered(client, KpiRedRecoveryQueue, {"fail_reason__exact": "WEAK_MATCH_ONLY"})
    assert [r.lead_source_pk for r in rows] == [park["weak"].source_pk]
    rows = _found_filtered(client, IdentityUnmatched, {"reason_code__exact": "CONFLICT_MULTIPLE_CANDIDATES",
                                                       "status__exact": "open"})
    assert [r.source_pk for r in rows] == [park["open"].source_pk]
    rows = _found_filtered(client, KpiRedBacklog, {"risk_level__exact": "medium"})
    assert {r.lead_source_pk for r in rows} == {park["open"].source_pk, park["weak"].source_pk}
    rows = _found_filtered(client, IdentityLink, {"decided": "manual"})
    assert [(r.source_pk, r.decided_by) for r in rows] == [(park["decided"].source_pk, "ana.revisora")]
    rows = _found_filtered(client, KpiRedBacklog, {"park_id": "park-lima-sur"})
    assert [r.lead_source_pk for r in rows] == [park["weak"].source_pk]
    assert _found_filtered(client, KpiRedBacklog, {"park_id": "park-elsewhere"}) == []


def _found_filtered(client, model, params) -> list:
    response = client.get(url(model, "changelist"), params)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_canonical_and_computed_tables_are_read_only_even_for_a_superuser(client, boss, park):
    for label in READ_ONLY:
        model = apps.get_model(label)
        obj = model._default_manager.order_by().first()
        assert obj is not None, label
        change = url(model, "change", quote(str(obj.pk)))
        response = client.get(change)
        assert response.status_code == 200 and b'name="_save"' not in response.content, label
        assert client.post(change, {}).status_code == 403, label
        assert client.get(url(model, "add")).status_code == 403, label
        assert client.get(url(model, "delete", quote(str(obj.pk)))).status_code == 403, label
        model_admin = admin.site._registry[model]
        request = response.wsgi_request
        assert not model_admin.has_add_permission(request), label
        assert not model_admin.has_change_permission(request, obj), label
        assert not model_admin.has_delete_permission(request, obj), label
        assert "delete_selected" not in model_admin.get_actions(request), label


def test_links_origins_and_job_runs_stay_as_they_were_after_a_hand_edit_attempt(client, boss, park):
    link = IdentityLink.objects.get(source_pk=park["decided"].source_pk)
    origin = IdentityOrigin.objects.get(person_id=link.person_id)
    run = JobRun.objects.first()
    client.post(url(IdentityLink, "change", link.pk), {"person": str(origin.person_id), "decided_by": "mallory"})
    client.post(url(IdentityLink, "delete", link.pk), {"post": "yes"})
    client.post(url(IdentityOrigin, "change", quote(str(origin.pk))), {"origin_source_id": "x"})
    client.post(url(JobRun, "change", run.pk), {"status": "failed"})
    assert IdentityLink.objects.get(pk=link.pk).decided_by == "ana.revisora"
    assert IdentityOrigin.objects.get(pk=origin.pk).origin_source_id == origin.origin_source_id
    assert JobRun.objects.get(pk=run.pk).status == run.status


def test_a_source_fix_keeps_the_keys_and_reaches_the_drivers_index(client, boss, park):
    driver = Driver.objects.get(pk=park["twin_driver"].pk)
    before = driver.updated_at
    response = client.get(url(Driver, "change", driver.pk))
    assert b'name="driver_id"' not in response.content  # keys are read-only
    form = response.context["adminform"].form
    data = {name: form.initial.get(name) or "" for name in form.fields}
    data.update(phone="912 000 111", hire_date="2024-03-01", birth_date="")
    assert client.post(url(Driver, "change", driver.pk), data).status_code == 302
    driver.refresh_from_db()
    assert driver.phone == "912 000 111" and driver.updated_at > before
    drivers_index_refresh()
    assert DriverIndexEntry.objects.get(driver_id=driver.driver_id).phone == "+51912000111"
    assert client.get(url(Driver, "add")).status_code == 403
    assert client.get(url(Driver, "delete", driver.pk)).status_code == 403


def test_a_reviewer_can_look_but_not_edit_links_in_the_admin(client, park):
    reviewer = park["reviewer"]
    client.force_login(reviewer)
    link = IdentityLink.objects.get(source_pk=park["decided"].source_pk)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(url(IdentityLink, "changelist")).status_code == 200
    assert client.get(url(IdentityLink, "change", link.pk)).status_code == 200
    assert client.get(url(IdentityLink, "add")).status_code == 403
    assert client.post(url(IdentityLink, "add"), {"source_table": "module_ct_cabinet_leads",
                                                  "source_pk": park["open"].source_pk}).status_code == 403
    assert client.post(url(IdentityLink, "change", link.pk), {"decided_by": "ana"}).status_code == 403
    assert client.post(url(IdentityLink, "delete", link.pk), {"post": "yes"}).status_code == 403
    # Not even source data: the group only views.
    driver = park["twin_driver"]
    assert client.post(url(Driver, "change", driver.pk), {"phone": "900000000"}).status_code == 403
    assert client.get(reverse("admin:auth_user_changelist")).status_code == 403
    assert IdentityLink.objects.filter(source_pk=park["decided"].source_pk).count() == 1
    assert not IdentityLink.objects.filter(source_pk=park["open"].source_pk).exists()
    # ...while the review screens are open to them.
    assert client.get(reverse("review:list")).status_code == 200
    assert b'id="nav-review"' in client.get(reverse("admin:index")).content


def test_the_review_screen_is_reachable_from_an_open_conflict_in_the_admin(client, boss, park):
    response = client.get(url(IdentityUnmatched, "changelist"), {"reason_code__exact": "CONFLICT_MULTIPLE_CANDIDATES"})
    assert reverse("review:lead", args=[park["open"].source_pk]).encode() in response.content
    # The deferral is recorded (who, when) and the lead stays open for review.
    assert KpiRedRecoveryQueue.objects.get(lead_source_pk=park["open"].source_pk).status == "failed"
    assert timezone.now() - timedelta(minutes=5) < review_queue().rows[-1].deferred_until - timedelta(hours=24)
