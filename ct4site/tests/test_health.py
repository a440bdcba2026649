"""/healthz and /readyz: JSON without authentication, 200 when ready, 503 naming the failing check."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.test import Client, override_settings
from django.utils import timezone

from ct4site import health
from recovery.heartbeat import heartbeat_beat
from recovery.schedules import schedules_sync


@pytest.fixture(autouse=True)
def _forget_migrations_verdict(monkeypatch):
    monkeypatch.setattr(health, "_migrations_ok_until", 0.0)


def test_healthz_answers_without_touching_the_database():
    # No django_db mark: pytest-django fails any database access in this test.
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_probes_answer_any_host_and_plain_http():
    """Load balancers call by IP address over HTTP; the host check and the HTTPS redirect do not apply."""
    with override_settings(SECURE_SSL_REDIRECT=True, ALLOWED_HOSTS=["ct4.example.pe"]):
        response = Client(HTTP_HOST="10.0.3.17:8000").get("/healthz")
        assert response.status_code == 200
        assert Client(HTTP_HOST="10.0.3.17:8000").get("/admin/login/").status_code == 400
    assert Client().post("/healthz").status_code == 405


@pytest.mark.django_db
def test_readyz_is_ok_with_database_migrations_and_no_schedules():
    response = Client().get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["failing"] == []
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["migrations"] == {"ok": True, "unapplied": 0}
    # Without schedules nothing needs a cluster.
    assert body["checks"]["qcluster"] == {"ok": True, "schedules": 0, "required": False}


@pytest.mark.django_db
def test_readyz_needs_a_recent_qcluster_heartbeat_once_schedules_exist():
    schedules_sync()
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["qcluster"]
    assert body["checks"]["qcluster"]["last_heartbeat_age_seconds"] is None
    assert body["checks"]["qcluster"]["schedules"] == 6

    heartbeat_beat(host="ops-1", pid=4242, cluster="ct4", now=timezone.now() - timedelta(minutes=9))
    assert Client().get("/readyz").status_code == 503  # older than CT4_READY_HEARTBEAT_MINUTES (5)

    heartbeat_beat(host="ops-2", pid=77, cluster="ct4")
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["qcluster"]["last_heartbeat_age_seconds"] <= 5


@pytest.mark.django_db
def test_readyz_503_when_a_migration_is_not_applied():
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_migrations "
                       "WHERE app = 'recovery' AND name = '0004_heartbeats_and_matched_index'")
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["migrations"]
    assert body["checks"]["migrations"] == {"ok": False, "unapplied": 1}


@pytest.mark.django_db
def test_readyz_503_names_the_database_and_not_its_error_text(monkeypatch):
    class Unreachable:
        def cursor(self):
            raise OperationalError('connection to server at "10.0.0.9", port 5432 failed: password for "ct4" wrong')

    monkeypatch.setattr(health, "connections", {"default": Unreachable()})
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body == {"status": "fail", "failing": ["database"],
                    "checks": {"database": {"ok": False, "error": "OperationalError"}}}
    assert b"10.0.0.9" not in response.content
