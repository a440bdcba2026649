"""/metrics: who may read it, every name prefixed ct4_, request metrics by view/method/status, gauges."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from identity.models import JobRun, JobRunStatus
from identity.tests.factories import make_lead

TOKEN = "s3cret-scrape-token-for-prometheus"
REMOTE = "203.0.113.40"


@pytest.fixture(autouse=True)
def _fresh_snapshot():
    cache.clear()


def samples(response) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from a text exposition."""
    out = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.django_db
def test_loopback_callers_read_metrics_and_every_name_starts_with_ct4():
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.content.decode()))
    names = {f.name for f in families}
    assert all(name.startswith("ct4_") for name in names), sorted(names)
    assert {"ct4_http_requests", "ct4_http_request_duration_seconds", "ct4_kpi_red_backlog_leads",
            "ct4_leads_matched_last_24h", "ct4_job_last_success_timestamp_seconds",
            "ct4_job_last_failure_timestamp_seconds", "ct4_recovery_queue_rows", "ct4_review_waiting_leads",
            "ct4_identity_unmatched_open_leads", "ct4_guardrail_offenders",
            "ct4_qcluster_last_heartbeat_timestamp_seconds",
            } <= names
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200


@pytest.mark.django_db
def test_remote_callers_need_the_bearer_token():
    remote = Client(REMOTE_ADDR=REMOTE)
    response = remote.get("/metrics")
    assert response.status_code == 403  # no token configured: loopback only
    assert "CT4_METRICS_TOKEN" in response.json()["error"]
    assert remote.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403
    with override_settings(CT4_METRICS_TOKEN=TOKEN):
        response = remote.get("/metrics")
        assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
        assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        assert remote.get("/metrics", HTTP_AUTHORIZATION=f"Token {TOKEN}").status_code == 401
        assert remote.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
        assert Client().get("/metrics").status_code == 200  # loopback needs no token


@pytest.mark.django_db
def test_a_request_through_a_local_proxy_is_a_remote_caller():
    """nginx on the same machine connects from 127.0.0.1; what it forwards comes from elsewhere."""
    proxied = Client(HTTP_X_FORWARDED_FOR=REMOTE)
    assert proxied.get("/metrics").status_code == 403
    with override_settings(CT4_METRICS_TOKEN=TOKEN):
        assert proxied.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.django_db
def test_requests_are_counted_and_timed_by_view_method_and_status():
    client = Client()
    labels = (("method", "GET"), ("status", "302"), ("view", "ops:dashboard"))
    before = samples(client.get("/metrics"))
    client.get("/ops/")
    client.get("/ops/")
    client.get("/no/such/page/")
    after = samples(client.get("/metrics"))
    count = ("ct4_http_requests_total", labels)
    assert after[count] - before.get(count, 0) == 2
    timed = ("ct4_http_request_duration_seconds_count", labels)
    assert after[timed] - before.get(timed, 0) == 2
    missing = ("ct4_http_requests_total", (("method", "GET"), ("status", "404"), ("view", "unresolved")))
    assert after[missing] - before.get(missing, 0) == 1
    # Probes are not counted: the scrapes above left no trace.
    assert not any(dict(lab).get("view") in ("/metrics", "metrics") for _, lab in after)


@pytest.mark.django_db
def test_business_gauges_show_the_data_the_test_made():
    make_lead(days_ago=1)
    make_lead(days_ago=3)
    make_lead(days_ago=30)
    finished = timezone.now() - timedelta(hours=2)
    JobRun.objects.create(name="seed_kpi_red_queue", status=JobRunStatus.SUCCEEDED, finished_at=finished)
    JobRun.objects.create(name="guardrails", status=JobRunStatus.FAILED, finished_at=finished,
                          counts={"verify_kpi_red_drain": 3, "check_migrations": 0, "checks": 2, "checks_failed": 1})
    values = samples(Client().get("/metrics"))
    assert values[("ct4_kpi_red_backlog_leads", (("risk_level", "high"),))] == 2
    assert values[("ct4_kpi_red_backlog_leads", (("risk_level", "medium"),))] == 1
    assert values[("ct4_kpi_red_backlog_leads", (("risk_level", "low"),))] == 0
    assert values[("ct4_job_last_success_timestamp_seconds", (("job_name", "seed_kpi_red_queue"),))] == pytest.approx(
        finished.timestamp())
    assert values[("ct4_job_last_success_timestamp_seconds", (("job_name", "recover_kpi_red_leads"),))] == 0
    assert values[("ct4_job_last_failure_timestamp_seconds", (("job_name", "guardrails"),))] == pytest.approx(
        finished.timestamp())
    assert values[("ct4_guardrail_offenders", (("check", "verify_kpi_red_drain"),))] == 3
    assert values[("ct4_guardrails_checks_failed", ())] == 1
    assert values[("ct4_recovery_queue_rows", (("status", "pending"),))] == 0
