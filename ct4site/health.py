"""Readiness for load balancers (/readyz): the database answers, migrations are applied, a qcluster beats.

Each check returns a name, a verdict and a few figures; no personal data, and an error is named
by its type only (a driver's message may carry the host, the user or a row value).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from recovery.heartbeat import cluster_last_seen
from recovery.schedules import schedules_count

# Once everything is applied, the answer only changes with a new deployment (a new process) or
# a rollback: a positive answer is kept this long instead of re-reading the migration graph.
MIGRATIONS_OK_SECONDS = 60
_migrations_ok_until = 0.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: dict = field(default_factory=dict)


def database_check() -> Check:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the database is the answer
        return Check("database", False, {"error": type(exc).__name__})
    return Check("database", True)


def migrations_check() -> Check:
    global _migrations_ok_until
    if time.monotonic() < _migrations_ok_until:
        return Check("migrations", True, {"unapplied": 0})
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    # Every node of the graph, not only the leaves: an applied leaf hides a missing ancestor from
    # migration_plan(), and a half-rolled-back database is exactly what this check must catch.
    applied = executor.loader.applied_migrations
    unapplied = sum(1 for node in executor.loader.graph.nodes if node not in applied)
    if unapplied:
        return Check("migrations", False, {"unapplied": unapplied})
    _migrations_ok_until = time.monotonic() + MIGRATIONS_OK_SECONDS
    return Check("migrations", True, {"unapplied": 0})


def qcluster_check(*, now=None) -> Check:
    """With ct4 schedules, some qcluster worker must have beaten within CT4_READY_HEARTBEAT_MINUTES."""
    now = now or timezone.now()
    window = settings.CT4_READY_HEARTBEAT_MINUTES
    scheduled = schedules_count()
    if not scheduled:
        return Check("qcluster", True, {"schedules": 0, "required": False})
    last = cluster_last_seen()
    age = round((now - last).total_seconds()) if last else None
    ok = last is not None and now - last <= timedelta(minutes=window)
    return Check("qcluster", ok, {"schedules": scheduled, "last_heartbeat_age_seconds": age,
                                  "within_minutes": window})


def readiness() -> dict:
    """Every check (the later ones need the database), the failing ones' names, and the verdict."""
    checks = [database_check()]
    if checks[0].ok:
        for check in (migrations_check, qcluster_check):
            try:
                checks.append(check())
            except Exception as exc:  # noqa: BLE001 - a check that cannot run has failed
                checks.append(Check(check.__name__.removesuffix("_check"), False, {"error": type(exc).__name__}))
    failing = [c.name for c in checks if not c.ok]
    return {
        "status": "ok" if not failing else "fail",
        "failing": failing,
        "checks": {c.name: {"ok": c.ok, **c.detail} for c in checks},
    }
