"""Short-lived cache of the figures the API and the dashboard recompute from the views.

At a million drivers the summary reads (identity gaps, red-KPI metrics, the weekly funnel, the
dashboard) take 0.3 to 1.5 s of PostgreSQL each, and the listings' page counts scan the per-lead
views. Twenty clients polling them would queue every web worker behind those queries
(docs/benchmarks.md, "API under load"). So a read's answer is kept in Django's cache (per web
process unless CACHES says otherwise) for CT4_API_CACHE_SECONDS (60 s; 0 turns it off), and it
is dropped sooner when a job run starts or finishes: the key carries the newest job run's id and
the latest finish among the recent runs (one index scan of ops.job_runs per request). What changes
the figures without a job run (a reviewer's decision, a recovery batch in the middle of a run)
shows within the TTL. The job-run endpoint (a run to follow) is never cached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import connection

T = TypeVar("T")

KEY_PREFIX = "ct4:read"
# A run that finishes is among the newest this many runs (a two-hour recovery sees about ten others start).
RECENT_RUNS = 50


def data_version() -> str:
    """Changes whenever a job run starts or finishes: the newest run's id and the latest recent finish."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT max(id), max(finished_at)
            FROM (SELECT id, finished_at FROM ops.job_runs ORDER BY id DESC LIMIT %s) recent
            """,
            [RECENT_RUNS],
        )
        newest, finished = cursor.fetchone()
    return f"{newest}:{finished.timestamp() if finished else ''}"


def read_cached(name: str, compute: Callable[[], T]) -> T:
    """`compute()`, or its answer from the last CT4_API_CACHE_SECONDS if no job run started or finished since.

    `name` says what is read (a URL with its query string, "dashboard"); an exception is not cached.
    """
    ttl = settings.CT4_API_CACHE_SECONDS
    if ttl <= 0:
        return compute()
    digest = hashlib.sha256(f"{name}|{data_version()}".encode()).hexdigest()
    return cache.get_or_set(f"{KEY_PREFIX}:{digest}", compute, timeout=ttl)
