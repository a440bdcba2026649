"""The review API (/api/v1/review/...): who may call it, the items (leads with their evidence, audit items
blind), each decision through the screens' services, its status codes, and 409 when another decision
came first, in sequence and in a real race."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from rest_framework.test import APIClient

from identity.index import drivers_index_refresh
from identity.models import IdentityJudgement, IdentityLink, IdentityLinkHistory
from recovery.models import AuditItem, KpiRedRecoveryQueue
from recovery.review.audit import audit_sample
from recovery.tests.factories import LEADS, conflict, person_of, recover, reviewer, twin, weak
from recovery.tests.test_api import api_schema, check_shape, client_for, user_with  # noqa: F401 - the fixture

V1 = "/api/v1"
ITEMS = f"{V1}/review/items"


def decision_url(source_pk: str) -> str:
    return f"{ITEMS}/{source_pk}/decision"


@pytest.fixture
def doubtful(db):
    """A conflict lead (two strong candidates) and a weak-match lead, as the recover job leaves them."""
    lead, a, b = conflict()
    weak_lead, weak_driver = weak()
    drivers_index_refresh()
    recover()
    return {"conflict": (lead, a, b), "weak": (weak_lead, weak_driver)}


@pytest.fixture
def audited(db):
    """A lead the matcher linked automatically, drawn for the audit (an open audit item)."""
    driver, lead = twin(days_ago=5)
    drivers_index_refresh()
    recover()
    link = IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk)
    assert link.decided_by == "system"
    audit_sample(seed="lima")
    return lead, driver, link, AuditItem.objects.get(source_pk=lead.source_pk)


# --- who may call it -----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path"), [("GET", ITEMS), ("POST", decision_url("1"))])
def test_anonymous_gets_401_other_users_403_reviewers_pass(method, path):
    body = {"json": {"action": "defer"}} if method == "POST" else {}
    anonymous = client_for(None).open(path, method=method, **body)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Token")
    assert anonymous.json["error"]["status"] == 401
    # Staff with every view permission of the data, but not the review permission.
    other = client_for(user_with("recovery.view_audititem", "identity.view_identitylink", name="clerk"))
    denied = other.open(path, method=method, **body)
    assert denied.status_code == 403
    assert set(denied.json["error"]) == {"status", "code", "message"}
    assert "identity.review_lead" in denied.json["error"]["message"]
    # The reviewer group, or the permission granted to the user directly: let in (no lead 1: 404).
    expected = 200 if method == "GET" else 404
    assert client_for(reviewer("ana.revisora")).open(path, method=method, **body).status_code == expected
    direct = client_for(user_with("identity.review_lead", name="luis"))
    assert direct.open(path, method=method, **body).status_code == expected


# --- the items ---------------------------------------------------------------------------------


def test_lead_items_show_the_lead_and_each_candidate_with_the_engines_evidence(doubtful, api_schema):  # noqa: F811
    lead, a, b = doubtful["conflict"]
    weak_lead, _ = doubtful["weak"]
    client = client_for(reviewer("ana.revisora"))
    response = client.get(ITEMS)
    assert response.status_code == 200
    check_shape(api_schema, "GET", ITEMS, response)
    page = response.json
    assert page["count"] == 2
    by_pk = {item["source_pk"]: item for item in page["results"]}
    item = by_pk[lead.source_pk]
    assert (item["kind"], item["reason"]) == ("conflict", "CONFLICT_MULTIPLE_CANDIDATES")
    assert item["lead"]["name"] == f"{lead.first_name} {lead.last_name}" and item["lead"]["phone"] == lead.phone
    assert {c["person_key"] for c in item["candidates"]} == {person_of(a), person_of(b)}
    candidate = next(c for c in item["candidates"] if c["person_key"] == person_of(a))
    assert candidate["drivers"][0]["driver_id"] == a.driver_id
    phone = next(f for f in candidate["fields"] if f["field"] == "phone")
    assert phone["level"] and phone["bits"] > 0 and phone["values"][0] == {"value": a.phone, "status": "agree"}
    assert candidate["score"] == pytest.approx(sum(f["bits"] or 0 for f in candidate["fields"]), abs=30)
    assert set(item["actions"]) == {"link", "reject", "reject_all", "defer"}
    assert by_pk[weak_lead.source_pk]["kind"] == "weak"

    weak_only = client.get(ITEMS, query_string={"kind": "weak"}).json
    assert [i["source_pk"] for i in weak_only["results"]] == [weak_lead.source_pk]
    assert client.get(ITEMS, query_string={"kind": "audit"}).json["count"] == 0
    paged = client.get(ITEMS, query_string={"page_size": 1, "page": 2}).json
    assert paged["count"] == 2 and len(paged["results"]) == 1 and paged["previous"]
    bad = client.get(ITEMS, query_string={"kind": "987654321"})
    assert bad.status_code == 400 and "kind" in bad.json["error"]["fields"]
    assert "987654321" not in bad.get_data(as_text=True)


def _keys_and_values(node, keys: set, values: list) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            keys.add(key)
            _keys_and_values(value, keys, values)
    elif isinstance(node, list):
        for value in node:
            _keys_and_values(value, keys, values)
    else:
        values.append(str(node))


def test_audit_items_are_blind(audited, api_schema):  # noqa: F811
    lead, driver, link, item = audited
    client = client_for(reviewer("ana.revisora"))
    response = client.get(ITEMS, query_string={"kind": "audit"})
    assert response.status_code == 200
    check_shape(api_schema, "GET", ITEMS, response)
    [shown] = response.json["results"]
    assert (shown["kind"], shown["audit_item_id"], shown["source_pk"]) == ("audit", item.pk, lead.source_pk)
    assert shown["lead"]["document"] == lead.document
    assert shown["drivers"] == [{"driver_id": driver.driver_id, "values": shown["drivers"][0]["values"]}]
    assert shown["drivers"][0]["values"]["phone"] == driver.phone
    assert shown["actions"] == ["confirm", "not_same", "cannot_tell"]
    keys, values = set(), []
    _keys_and_values(shown, keys, values)
    for hidden in ("score", "rule", "match_rule", "rule_version", "confidence", "confidence_level", "evidence",
                   "stratum", "level", "bits", "status", "fields", "candidates", "person_key"):
        assert hidden not in keys, hidden
    text = " ".join(values).lower()
    for hidden in (link.match_rule, item.stratum, link.rule_version, link.confidence_level, "agree", "disagree"):
        assert hidden.lower() not in text, hidden
    assert f"{link.match_score:.1f}" not in text and str(link.evidence["score"]) not in text
    # Without a kind the audit item follows the leads (none here).
    assert [i["kind"] for i in client.get(ITEMS).json["results"]] == ["audit"]


# --- decisions ---------------------------------------------------------------------------------


def test_link_is_applied_and_a_second_decision_gets_409(doubtful, api_schema):  # noqa: F811
    lead, a, b = doubtful["conflict"]
    ana, bob = client_for(reviewer("ana.revisora")), client_for(reviewer("bob.revisor"))
    response = ana.post(decision_url(lead.source_pk), json={"action": "link", "person_key": person_of(a),
                                                            "note": "mismo DNI en la llamada"})
    assert response.status_code == 200, response.json
    check_shape(api_schema, "POST", f"{ITEMS}/{{source_pk}}/decision", response)
    assert response.json["status"] == "linked" and response.json["person_keys"] == [person_of(a)]
    link = IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk)
    assert (str(link.person_id), link.decided_by, link.match_rule) == (person_of(a), "ana.revisora", "manual_review")
    assert KpiRedRecoveryQueue.objects.get(lead_source_pk=lead.source_pk).status == "matched"
    assert IdentityJudgement.objects.get(source_pk=lead.source_pk).note == "mismo DNI en la llamada"

    second = bob.post(decision_url(lead.source_pk), json={"action": "link", "person_key": person_of(b)})
    assert second.status_code == 409
    check_shape(api_schema, "POST", f"{ITEMS}/{{source_pk}}/decision", second)
    error = second.json["error"]
    assert (error["status"], error["code"]) == (409, "already_linked")
    assert "ana.revisora" in error["message"] and "not applied" in error["message"]
    assert IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk).person_id == link.person_id
    assert lead.source_pk not in {i["source_pk"] for i in bob.get(ITEMS).json["results"]}


@pytest.mark.parametrize(("action", "with_person", "status", "judgements"), [
    ("reject", True, "rejected", {"not_this_person": 1}),
    ("reject_all", False, "rejected", {"not_this_person": 2}),
    ("defer", False, "deferred", {"defer": 1}),
])
def test_reject_reject_all_and_defer(doubtful, action, with_person, status, judgements):
    lead, a, _ = doubtful["conflict"]
    body = {"action": action, **({"person_key": person_of(a)} if with_person else {})}
    response = client_for(reviewer("ana.revisora")).post(decision_url(lead.source_pk), json=body)
    assert response.status_code == 200, response.json
    assert (response.json["status"], response.json["action"]) == (status, action)
    assert response.json["audit_item_id"] is None and response.json["link_undone"] is None
    made = IdentityJudgement.objects.filter(source_pk=lead.source_pk)
    assert {v: made.filter(verdict=v).count() for v in judgements} == judgements
    assert not IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk).exists()


def test_a_decision_on_a_page_someone_changed_since_gets_409_stale(doubtful):
    lead, a, b = doubtful["conflict"]
    ana, bob = client_for(reviewer("ana.revisora")), client_for(reviewer("bob.revisor"))
    seen = next(i for i in bob.get(ITEMS).json["results"] if i["source_pk"] == lead.source_pk)["last_judgement_id"]
    assert ana.post(decision_url(lead.source_pk),
                    json={"action": "reject", "person_key": person_of(a)}).status_code == 200
    late = bob.post(decision_url(lead.source_pk), json={"action": "link", "person_key": person_of(b), "seen": seen})
    assert late.status_code == 409 and late.json["error"]["code"] == "stale"
    assert "ana.revisora" in late.json["error"]["message"]
    assert not IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk).exists()


@pytest.mark.parametrize("body", [
    {"action": "merge"},
    {"action": "link"},
    {"action": "reject", "person_key": None},
    {"action": "link", "person_key": "not-a-uuid"},
    {"note": "sin acción"},
])
def test_a_bad_body_gets_400_and_changes_nothing(doubtful, body):
    lead, *_ = doubtful["conflict"]
    response = client_for(reviewer("ana.revisora")).post(decision_url(lead.source_pk), json=body)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid" and response.json["error"]["fields"]
    assert not IdentityJudgement.objects.filter(source_pk=lead.source_pk).exists()


def test_a_person_who_is_no_candidate_gets_400(doubtful):
    lead, *_ = doubtful["conflict"]
    _, weak_driver = doubtful["weak"]
    response = client_for(reviewer("ana.revisora")).post(
        decision_url(lead.source_pk), json={"action": "link", "person_key": person_of(weak_driver)})
    assert response.status_code == 400
    assert "not a standing candidate" in response.json["error"]["message"]
    assert not IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk).exists()


def test_unknown_lead_and_a_lead_without_audit_item_get_404(doubtful):
    lead, *_ = doubtful["conflict"]
    client = client_for(reviewer("ana.revisora"))
    unknown = client.post(decision_url("no-such-lead"), json={"action": "defer"})
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "not_found"
    no_item = client.post(decision_url(lead.source_pk), json={"action": "confirm"})
    assert no_item.status_code == 404 and "no audit item" in no_item.json["error"]["message"]


def test_confirm_is_recorded_once_and_a_second_answer_gets_409(audited):
    lead, _, link, item = audited
    ana, bob = client_for(reviewer("ana.revisora")), client_for(reviewer("bob.revisor"))
    response = ana.post(decision_url(lead.source_pk), json={"action": "confirm", "note": "mismo DNI"})
    assert response.status_code == 200, response.json
    assert (response.json["status"], response.json["audit_item_id"]) == ("recorded", item.pk)
    assert response.json["link_undone"] is None
    item.refresh_from_db()
    assert (item.verdict, item.decided_by_name, item.note) == ("same", "ana.revisora", "mismo DNI")
    second = bob.post(decision_url(lead.source_pk), json={"action": "not_same"})
    assert second.status_code == 409 and second.json["error"]["code"] == "already_decided"
    assert "ana.revisora already answered" in second.json["error"]["message"]
    assert IdentityLink.objects.filter(pk=link.pk).exists()
    assert ana.get(ITEMS, query_string={"kind": "audit"}).json["count"] == 0


@pytest.mark.parametrize(("action", "verdict", "undone"), [("not_same", "not_same", True),
                                                           ("cannot_tell", "cannot_tell", None)])
def test_not_same_undoes_the_link_and_cannot_tell_does_not(audited, action, verdict, undone):
    lead, _, link, item = audited
    response = client_for(reviewer("ana.revisora")).post(decision_url(lead.source_pk), json={"action": action})
    assert response.status_code == 200, response.json
    assert response.json["link_undone"] is undone
    item.refresh_from_db()
    assert item.verdict == verdict
    assert IdentityLink.objects.filter(pk=link.pk).exists() is (undone is None)
    assert IdentityLinkHistory.objects.filter(audit_item_id=item.pk).exists() is bool(undone)


@pytest.mark.django_db(transaction=True)
def test_two_links_over_the_api_at_the_same_moment_make_one_and_a_409(slow_decision_checks):
    lead, a, b = conflict()
    drivers_index_refresh()
    recover()
    users = {"ana.revisora": (reviewer("ana.revisora"), person_of(a)),
             "bob.revisor": (reviewer("bob.revisor"), person_of(b))}
    barrier = threading.Barrier(2)
    responses = {}

    def post(name):
        user, person_key = users[name]
        client = APIClient()
        client.force_authenticate(user)
        try:
            barrier.wait()
            responses[name] = client.post(decision_url(lead.source_pk), {"action": "link", "person_key": person_key},
                                          format="json")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post, args=(name,)) for name in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in responses.values()) == [200, 409]
    winner = next(name for name, r in responses.items() if r.status_code == 200)
    loser = next(r for r in responses.values() if r.status_code == 409)
    assert loser.json()["error"]["code"] == "already_linked" and winner in loser.json()["error"]["message"]
    assert IdentityLink.objects.filter(source_table=LEADS, source_pk=lead.source_pk).count() == 1


# --- the schema ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_documents_both_paths_and_their_errors():
    get_user_model().objects.create_user("ana", password="lima-2026-secret")
    browser = APIClient()
    browser.login(username="ana", password="lima-2026-secret")
    schema = browser.get("/api/schema/", {"format": "json"}).json()
    items, decision = schema["paths"][ITEMS]["get"], schema["paths"][f"{ITEMS}/{{source_pk}}/decision"]["post"]
    assert {"200", "400", "401", "403"} <= set(items["responses"])
    assert {"200", "400", "401", "403", "404", "409"} <= set(decision["responses"])
    assert "kind" in {p["name"] for p in items["parameters"]}
    request = decision["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    components = schema["components"]["schemas"]
    assert {"action", "person_key", "note"} <= set(components[request]["properties"])
    actions = {"link", "reject", "reject_all", "defer", "confirm", "not_same", "cannot_tell"}
    assert any(set(c.get("enum", ())) == actions for c in components.values())
