"""Prometheus exposition for /metrics: request counts and latencies, and the business gauges.

Every name starts with `ct4_`. Request metrics live in a registry of their own. Under gunicorn,
ct4site/deploy/gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before the workers start: each
worker then writes its request metrics to files there, and a scrape answered by any worker sums
them all. The business gauges are read at scrape time from recovery.metrics (cached there).
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from django.conf import settings
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from recovery.metrics import metrics_snapshot

# The *_created series double the output and no rule of ours reads them.
disable_created_metrics()
REQUEST_REGISTRY = CollectorRegistry(auto_describe=False)
REQUEST_LABELS = ("view", "method", "status")
REQUESTS = Counter("ct4_http_requests_total", "HTTP requests answered, by view, method and status.",
                   REQUEST_LABELS, registry=REQUEST_REGISTRY)
LATENCY = Histogram("ct4_http_request_duration_seconds", "Time to answer an HTTP request, by view, method and status.",
                    REQUEST_LABELS, registry=REQUEST_REGISTRY,
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
# Methods outside this set are counted as "other": a client cannot grow the label set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def view_label(request) -> str:
    """The URL pattern's name (`api:identity-gaps`), never the path: bounded label values, no ids."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return match.view_name or match._func_path
    if request.path.startswith(f"/{settings.STATIC_URL.lstrip('/')}"):
        return "static"
    return "unresolved"


def request_observe(request, status_code: int, seconds: float) -> None:
    method = request.method if request.method in KNOWN_METHODS else "other"
    labels = (view_label(request), method, str(status_code))
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)


# --- who may read /metrics ---------------------------------------------------------------


def _is_loopback(request) -> bool:
    # Behind a reverse proxy on the same machine every caller looks like 127.0.0.1; a forwarded
    # request is a remote caller.
    if request.META.get("HTTP_X_FORWARDED_FOR") or request.META.get("HTTP_FORWARDED"):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def metrics_access(request) -> str:
    """'ok', 'no_token' (a remote caller and no CT4_METRICS_TOKEN set) or 'bad_token'."""
    if _is_loopback(request):
        return "ok"
    token = settings.CT4_METRICS_TOKEN
    if not token:
        return "no_token"
    sent = request.META.get("HTTP_AUTHORIZATION", "")
    return "ok" if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()) else "bad_token"


# --- the business gauges -------------------------------------------------------------------


def _seconds(moment) -> float:
    """A Unix timestamp; 0 for "never" (an alert on the age of 0 fires, as it should)."""
    return moment.timestamp() if moment is not None else 0.0


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = (), values: dict | None = None,
           value: float | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels) if labels else None)
    if labels:
        for key, figure in (values or {}).items():
            family.add_metric([key] if isinstance(key, str) else list(key), figure)
    else:
        family.add_metric([], value)
    return family


def business_families(snapshot: dict) -> list[GaugeMetricFamily]:
    """The snapshot of recovery.metrics as gauges."""
    jobs = snapshot["jobs"]
    guardrails = snapshot["guardrails"]
    return [
        _gauge("ct4_kpi_red_backlog_leads",
               "Red-KPI backlog (leads with no identity link and no claim), by risk level.",
               ("risk_level",), snapshot["backlog_by_risk"]),
        _gauge("ct4_leads_matched_last_24h", "Leads the recovery and retry jobs matched in the last 24 hours.",
               value=snapshot["matched_last_24h"]),
        # "job_name", not "job": Prometheus gives every scraped series its own `job` label.
        _gauge("ct4_job_last_success_timestamp_seconds", "End of each job's last successful run (0: never).",
               ("job_name",), {name: _seconds(j["last_success_at"]) for name, j in jobs.items()}),
        _gauge("ct4_job_last_failure_timestamp_seconds", "End of each job's last failed run (0: never).",
               ("job_name",), {name: _seconds(j["last_failure_at"]) for name, j in jobs.items()}),
        _gauge("ct4_recovery_queue_rows", "Rows of ops.cabinet_kpi_red_recovery_queue, by status.",
               ("status",), snapshot["queue_by_status"]),
        _gauge("ct4_review_waiting_leads", "Leads waiting for a reviewer (open conflict and weak-match rows).",
               value=snapshot["review_waiting"]),
        _gauge("ct4_identity_unmatched_open_leads", "Open canon.identity_unmatched rows of leads, by reason code.",
               ("reason",), snapshot["unmatched_open_by_reason"]),
        _gauge("ct4_guardrail_offenders", "Offenders each guardrail found in the last finished guardrails run.",
               ("check",), guardrails["offenders"]),
        _gauge("ct4_guardrails_checks_failed", "Guardrails that failed in the last finished guardrails run.",
               value=guardrails["checks_failed"]),
        _gauge("ct4_guardrails_last_run_timestamp_seconds", "End of the last finished guardrails run (0: never).",
               value=_seconds(guardrails["finished_at"])),
        _gauge("ct4_schedules", "Active ct4 django-q2 schedules (0: nothing runs the jobs unattended).",
               value=snapshot["schedules"]),
        _gauge("ct4_qcluster_last_heartbeat_timestamp_seconds", "Last heartbeat of any qcluster worker (0: none).",
               value=_seconds(snapshot["qcluster_last_seen"])),
        _gauge("ct4_qcluster_workers", "qcluster worker processes that beat within CT4_READY_HEARTBEAT_MINUTES.",
               value=snapshot["qcluster_workers"]),
        _gauge("ct4_business_metrics_read_timestamp_seconds",
               "When the business gauges were read (they are cached CT4_METRICS_CACHE_SECONDS).",
               value=_seconds(snapshot["read_at"])),
        _gauge("ct4_business_metrics_read_seconds", "How long reading the business gauges took.",
               value=snapshot["read_seconds"]),
    ]


class _BusinessCollector:
    def collect(self):
        yield from business_families(metrics_snapshot())


BUSINESS_REGISTRY = CollectorRegistry(auto_describe=False)
BUSINESS_REGISTRY.register(_BusinessCollector())


def metrics_render() -> tuple[bytes, str]:
    """The text exposition of every ct4 metric, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        requests = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(requests)
    else:
        requests = REQUEST_REGISTRY
    return generate_latest(requests) + generate_latest(BUSINESS_REGISTRY), CONTENT_TYPE_LATEST
