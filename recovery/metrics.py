"""The business figures /metrics exposes, as plain data, read cheaply and kept a few seconds.

Every figure but one is a small indexed query over the operational tables (queue, job runs,
unmatched rows, heartbeats). The exception is the backlog by risk: it can only come from
ops.v_cabinet_kpi_red_backlog, an anti-join over every lead (~70 ms at 100k leads). So the
whole snapshot is kept CT4_METRICS_CACHE_SECONDS (30 s) in Django's cache: however often
Prometheus (or several) scrape, each web process reads it at most once per interval.
ct4site.metrics turns the snapshot into Prometheus gauges.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from identity.domain import RiskLevel
from identity.models import REVIEW_REASONS, JobRun, JobRunStatus, ReasonCode
from recovery import heartbeat, reports, schedules, selectors, status
from recovery.guardrails import JOB_NAME as GUARDRAILS_JOB
from recovery.models import WorkStatus

CACHE_KEY = "ct4:metrics:snapshot"
# Keys of a guardrails run's counts that are not one check's offenders.
GUARDRAIL_TOTALS = ("checks", "checks_failed")


def _guardrails_last() -> dict:
    """The last finished guardrails run: offenders per check and how many checks failed."""
    run = (JobRun.objects.filter(name=GUARDRAILS_JOB, status__in=[JobRunStatus.SUCCEEDED, JobRunStatus.FAILED])
           .order_by("-started_at").only("counts", "finished_at").first())
    if run is None:
        return {"finished_at": None, "checks_failed": 0, "offenders": {}}
    counts = run.counts or {}
    return {
        "finished_at": run.finished_at,
        "checks_failed": int(counts.get("checks_failed", 0)),
        "offenders": {name: int(n) for name, n in counts.items() if name not in GUARDRAIL_TOTALS},
    }


def _jobs() -> dict[str, dict]:
    """Last success and last failure per job; the jobs the diagnosis expects appear even before a run."""
    rows = {r["name"]: r for r in status.job_last_outcomes()}
    names = [*reports.EXPECTED_JOBS, *sorted(set(rows) - set(reports.EXPECTED_JOBS))]
    return {name: {"last_success_at": rows.get(name, {}).get("last_success_at"),
                   "last_failure_at": rows.get(name, {}).get("last_failure_at")} for name in names}


def metrics_read(*, now=None) -> dict:
    """Read every business figure now (uncached): see metrics_snapshot."""
    started = time.monotonic()
    now = now or timezone.now()
    backlog = selectors.backlog_now()["by_risk"]
    queue = reports.queue_status_counts()
    unmatched = reports.unmatched_open_by_reason()
    ready_window = timedelta(minutes=settings.CT4_READY_HEARTBEAT_MINUTES)
    return {
        "read_at": now,
        "backlog_by_risk": {risk: backlog.get(risk, 0) for risk in RiskLevel.values},
        "matched_last_24h": status.leads_matched_since(now - timedelta(hours=24)),
        "queue_by_status": {state: queue.get(state, 0) for state in WorkStatus.values},
        "unmatched_open_by_reason": {reason: unmatched.get(reason, 0) for reason in ReasonCode.values},
        # The dashboard's review figure: open conflict and weak-match rows (a link closes them).
        "review_waiting": sum(unmatched.get(reason, 0) for reason in REVIEW_REASONS),
        "jobs": _jobs(),
        "guardrails": _guardrails_last(),
        "schedules": schedules.schedules_count(),
        "qcluster_last_seen": heartbeat.cluster_last_seen(),
        "qcluster_workers": heartbeat.cluster_workers_seen(since=now - ready_window),
        "read_seconds": round(time.monotonic() - started, 4),
    }


def metrics_snapshot() -> dict:
    """The business figures, at most CT4_METRICS_CACHE_SECONDS old (0 turns the cache off)."""
    ttl = settings.CT4_METRICS_CACHE_SECONDS
    if ttl <= 0:
        return metrics_read()
    return cache.get_or_set(CACHE_KEY, metrics_read, timeout=ttl)
