"""The REST API: who may call what, response shapes against the OpenAPI schema, job starts that run.

Requests go through Django's WSGI application with werkzeug's test client, so schemathesis can
check each response against the schema drf-spectacular generates.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import schemathesis
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client as DjangoClient
from django_q.conf import Conf
from django_q.models import OrmQ
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from rest_framework.authtoken.models import Token
from rest_framework.throttling import ScopedRateThrottle
from werkzeug.test import Client

from identity.domain import lima_today
from identity.index import drivers_index_refresh
from identity.models import JobRun, JobRunStatus
from identity.tests.factories import make_driver, make_lead
from recovery.models import KpiRedRecoveryQueue, WorkStatus
from recovery.queue import queue_seed

V1 = "/api/v1"
# (method, path, permission the caller needs)
READS = [
    ("GET", f"{V1}/ops/payments/cabinet-financial-14d/kpi-red-recovery-metrics",
     "recovery.view_kpiredrecoverymetricsdaily"),
    ("GET", f"{V1}/ops/payments/cabinet-financial-14d", "recovery.view_cabinetfinancial14d"),
    ("GET", f"{V1}/ops/identity-gaps", "recovery.view_identitygapanalysis"),
    ("GET", f"{V1}/ops/cabinet-leads/limbo", "recovery.view_cabinetleadslimbo"),
    ("GET", f"{V1}/ops/cabinet-leads/funnel-weekly", "recovery.view_funnelauditweekly"),
    ("GET", f"{V1}/identity/quality", "recovery.view_audititem"),
]
STARTS = [
    ("POST", f"{V1}/ops/identity-gaps/run-recovery", "recovery.run_recovery"),
    ("POST", f"{V1}/identity/drivers-index/refresh", "recovery.run_recovery"),
]


@pytest.fixture(scope="module")
def api_schema(django_db_blocker):
    """The OpenAPI document drf-spectacular serves, loaded by schemathesis for response checks."""
    document = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(autouse=True)
def _fresh_throttle():
    cache.clear()


def user_with(*perms: str, name: str = "ana") -> User:
    user = User.objects.create_user(name, password="lima-2026-secret")
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


class TokenClient(Client):
    """werkzeug's test client over Django's WSGI app, sending one user's API token on every call."""

    def __init__(self, user: User | None):
        super().__init__(get_wsgi_application())
        self.token = Token.objects.create(user=user).key if user else None

    def open(self, *args, **kwargs):
        if self.token:
            kwargs.setdefault("headers", {})["Authorization"] = f"Token {self.token}"
        # As Django's own test client does: the request must not close the test's connection.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            return super().open(*args, **kwargs)
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)


def client_for(user: User | None) -> TokenClient:
    return TokenClient(user)


def check_shape(api_schema, method: str, path: str, response) -> None:
    api_schema[path][method].validate_response(response)


@pytest.fixture
def park(db):
    """Two leads that match drivers, one that cannot, and trips and an index: every view has rows."""
    lima_today()
    make_driver(driver_id="d1", first_name="Rosa", last_name="Quispe Mamani", phone="987111222",
                document="41234567")
    make_driver(driver_id="d2", first_name="Jorge", last_name="Huaman Rojas", phone="987333444",
                document="42345678")
    make_lead(id=1, first_name="Rosa", last_name="Quispe Mamani", phone="987111222", document="41234567",
              days_ago=0)
    make_lead(id=2, first_name="Jorge", last_name="Huaman Rojas", phone="987333444", document="42345678",
              days_ago=3)
    make_lead(id=3, first_name="Nadie", last_name="Conocido Aqui", phone="955000111", document="49999999",
              days_ago=20)
    drivers_index_refresh()
    queue_seed()


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path", "perm"), READS + STARTS)
def test_anonymous_gets_401_and_no_permission_gets_403(method, path, perm):
    anonymous = client_for(None).open(path, method=method)
    assert anonymous.status_code == 401
    assert anonymous.json["error"]["status"] == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Token")
    other_perms = [p for _, _, p in READS + STARTS if p != perm][:2]
    denied = client_for(user_with(*other_perms)).open(path, method=method)
    assert denied.status_code == 403
    assert set(denied.json["error"]) == {"status", "code", "message"}


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path", "perm"), READS)
def test_reads_answer_the_schema_shape_for_a_permitted_user(park, api_schema, method, path, perm):
    response = client_for(user_with(perm)).open(path, method=method)
    assert response.status_code == 200, response.json
    check_shape(api_schema, method, path, response)


@pytest.mark.django_db
def test_metrics_cover_the_range_and_today_matches_the_backlog(park):
    client = client_for(user_with("recovery.view_kpiredrecoverymetricsdaily"))
    today = lima_today()
    body = client.get(f"{V1}/ops/payments/cabinet-financial-14d/kpi-red-recovery-metrics",
                      query_string={"date_from": str(today - timedelta(days=6)), "date_to": str(today)}).json
    assert [d["metric_date"] for d in body["days"]] == [str(today - timedelta(days=n)) for n in range(6, -1, -1)]
    assert body["backlog"]["total"] == 3
    assert body["days"][-1]["backlog_end"] == body["backlog"]["total"]
    default = client.get(f"{V1}/ops/payments/cabinet-financial-14d/kpi-red-recovery-metrics").json
    assert (default["date_from"], default["date_to"]) == (str(today - timedelta(days=29)), str(today))
    # The history starts with the first lead, 20 days ago: 21 days of the default 30 have rows.
    assert len(default["days"]) == 21


@pytest.mark.django_db
@pytest.mark.parametrize("query", [
    {"date_from": "2026-13-01"},
    {"date_from": "2026-05-02", "date_to": "2026-05-01"},
    {"date_from": "2020-01-01", "date_to": "2026-01-01"},
])
def test_bad_metrics_parameters_answer_400_with_the_reason(query):
    client = client_for(user_with("recovery.view_kpiredrecoverymetricsdaily"))
    response = client.get(f"{V1}/ops/payments/cabinet-financial-14d/kpi-red-recovery-metrics", query_string=query)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid"
    assert "date_from" in response.json["error"]["fields"]


@pytest.mark.django_db
def test_error_bodies_never_echo_what_was_sent(park):
    """A rejected value may be a phone or a document: the message names the field, not the value."""
    client = client_for(user_with("recovery.view_cabinetleadslimbo"))
    response = client.get(f"{V1}/ops/cabinet-leads/limbo", query_string={"limbo_stage": "987654321x41234567"})
    assert response.status_code == 400
    assert "limbo_stage" in response.json["error"]["fields"]
    assert "987654321" not in response.get_data(as_text=True)
    assert "<value>" in response.get_data(as_text=True)


@pytest.mark.django_db
def test_listings_filter_and_paginate(park):
    client = client_for(user_with("recovery.view_cabinetleadslimbo", "recovery.view_cabinetfinancial14d"))
    page = client.get(f"{V1}/ops/cabinet-leads/limbo", query_string={"page_size": 2}).json
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    no_identity = client.get(f"{V1}/ops/cabinet-leads/limbo", query_string={"limbo_stage": "NO_IDENTITY"}).json
    assert {r["lead_source_pk"] for r in no_identity["results"]} == {"1", "2", "3"}
    money = client.get(f"{V1}/ops/payments/cabinet-financial-14d", query_string={"has_identity": "false"}).json
    assert money["count"] == 3
    assert client.get(f"{V1}/ops/cabinet-leads/limbo", query_string={"page": 99}).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_run_recovery_answers_202_runs_the_job_and_shows_it(park, api_schema, monkeypatch):
    """django-q2 in sync mode: the POST runs the real recovery; the job endpoint shows its result."""
    monkeypatch.setattr(Conf, "SYNC", True)
    client = client_for(user_with("recovery.run_recovery", "identity.view_jobrun"))
    response = client.post(f"{V1}/ops/identity-gaps/run-recovery", query_string={"limit": 10})
    assert response.status_code == 202, response.json
    check_shape(api_schema, "POST", f"{V1}/ops/identity-gaps/run-recovery", response)
    run_id = response.json["job_run_id"]
    assert response.headers["Location"] == f"{V1}/ops/jobs/{run_id}"
    run = JobRun.objects.get(pk=run_id)
    assert (run.name, run.trigger, run.status, run.params["limit"]) == (
        "recover_kpi_red_leads", "api", JobRunStatus.SUCCEEDED, 10)
    assert KpiRedRecoveryQueue.objects.filter(status=WorkStatus.MATCHED).count() == 2
    shown = client.get(response.headers["Location"])
    assert shown.status_code == 200
    check_shape(api_schema, "GET", f"{V1}/ops/jobs/{{run_id}}", shown)
    assert shown.json["status"] == "succeeded" and shown.json["counts"]["matched"] == 2


@pytest.mark.django_db
def test_a_queued_run_waits_for_the_cluster(park):
    """Without sync mode the POST only enqueues: the run is 'queued' and a task waits in the ORM broker."""
    client = client_for(user_with("recovery.run_recovery", "identity.view_jobrun"))
    response = client.post(f"{V1}/identity/drivers-index/refresh", query_string={"full": "true"})
    assert response.status_code == 202
    assert response.json["status"] == "queued"
    assert OrmQ.objects.count() == 1
    shown = client.get(response.json["url"]).json
    assert (shown["name"], shown["status"], shown["params"]) == ("refresh_drivers_index", "queued", {"full": True})


@pytest.mark.django_db
@pytest.mark.parametrize("limit", ["0", "-5", "abc", "100001"])
def test_run_recovery_rejects_a_bad_limit(limit):
    client = client_for(user_with("recovery.run_recovery"))
    response = client.post(f"{V1}/ops/identity-gaps/run-recovery", query_string={"limit": limit})
    assert response.status_code == 400
    assert "limit" in response.json["error"]["fields"]
    assert not JobRun.objects.exists()


@pytest.mark.django_db
def test_job_starts_are_throttled(monkeypatch):
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"jobs": "2/minute"})
    client = client_for(user_with("recovery.run_recovery"))
    codes = [client.post(f"{V1}/identity/drivers-index/refresh").status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    assert JobRun.objects.count() == 2


@pytest.mark.django_db
def test_session_posts_need_the_csrf_token():
    user_with("recovery.run_recovery")
    browser = DjangoClient(enforce_csrf_checks=True)
    assert browser.login(username="ana", password="lima-2026-secret")
    refused = browser.post(f"{V1}/identity/drivers-index/refresh")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]["message"]
    browser.get("/api/docs/")  # any page that sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    accepted = browser.post(f"{V1}/identity/drivers-index/refresh", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 202


@pytest.mark.django_db
def test_unknown_job_run_is_a_404_in_the_error_shape():
    response = client_for(user_with("identity.view_jobrun")).get(f"{V1}/ops/jobs/987654")
    assert response.status_code == 404
    assert response.json["error"]["status"] == 404


@pytest.mark.django_db
def test_schema_and_docs_are_served_without_a_cdn():
    user_with()
    browser = DjangoClient()
    assert browser.get("/api/schema/").status_code in (401, 403)
    browser.login(username="ana", password="lima-2026-secret")
    assert browser.get("/api/schema/").status_code == 200
    docs = browser.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs
    assert "cdn." not in docs and "unpkg" not in docs and "jsdelivr" not in docs


@pytest.mark.django_db
def test_unknown_api_paths_answer_in_the_error_shape():
    response = client_for(user_with("identity.view_jobrun")).get(f"{V1}/ops/jobs/not-a-number")
    assert response.status_code == 404
    assert response.json == {"error": {"status": 404, "code": "not_found", "message": "No such API resource."}}
