"""Short-lived cache of the figures the API and the dashboard recompute from the views.

At a million drivers the summary reads (identity gaps, red-KPI metrics, the weekly funnel, the
dashboard) take 0.3 to 1.5 s of PostgreSQL each, and the listings' page counts scan the per-lead
views. Twenty clients polling them would queue every web worker behind those queries
(docs/benchmarks.md, "API under load"). So a read's answer is kept in Django's cache for
CT4_API_CACHE_SECONDS (60 s; 0 turns it off), and it goes stale sooner when a job run starts or
finishes: each answer carries the data version it was computed at (the newest job run's id and the
latest finish among the recent runs; one index scan of ops.job_runs per request). What changes the
figures without a job run (a reviewer's decision, a recovery batch in the middle of a run) shows
within the TTL. The job-run endpoint (a run to follow) is never cached.

Single flight: the worker that finds an answer stale takes a lock in the cache and recomputes it;
while the lock is held, the other workers serve the stale answer instead of computing it too. That
needs a cache the workers share (CT4_CACHE=database); with the default per-process cache each
worker computes its own answers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import connection

T = TypeVar("T")

KEY_PREFIX = "ct4:read"
# A run that finishes is among the newest this many runs (a two-hour recovery sees about ten others start).
RECENT_RUNS = 50
# A worker recomputing an answer holds its lock at most this long (longer than any read; a worker
# that dies releases it by expiry).
LOCK_SECONDS = 60
# A stale answer stays in the cache this long past its TTL, to be served while it is recomputed.
STALE_KEEP_SECONDS = 600


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


def cache_key(name: str) -> str:
    """Where the answer of `name` is kept; its lock is this plus ":lock"."""
    return f"{KEY_PREFIX}:{hashlib.sha256(name.encode()).hexdigest()}"


def read_cached(name: str, compute: Callable[[], T]) -> T:
    """`compute()`, or its answer of the last CT4_API_CACHE_SECONDS if no job run started or finished since.

    `name` says what is read (a URL with its query string, "dashboard"); an exception is not cached.
    A stale answer is served only while another worker holds the lock to recompute it.
    """
    ttl = settings.CT4_API_CACHE_SECONDS
    if ttl <= 0:
        return compute()
    key = cache_key(name)
    version = data_version()
    entry = cache.get(key)  # (version, computed at, answer)
    if entry is not None and entry[0] == version and time.time() - entry[1] < ttl:
        return entry[2]
    lock = f"{key}:lock"
    if not cache.add(lock, 1, timeout=LOCK_SECONDS):
        if entry is not None:
            return entry[2]  # another worker is recomputing it
        return compute()  # nothing to serve yet: compute without storing
    try:
        answer = compute()
        cache.set(key, (version, time.time(), answer), timeout=ttl + STALE_KEEP_SECONDS)
    finally:
        cache.delete(lock)
    return answer
