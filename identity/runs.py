"""How every job runs: a row in ops.job_runs, an optional singleton advisory lock, batch logs.

Services wrap their work in `job_run(...)`; the commands, the schedules and the API all end up
here, so freshness badges and "a second copy exits at once" hold whatever started the job.
Each log line also carries its figures as `extra=` fields (job, run_id, event, batch, counts,
seconds), which the JSON log format (CT4_LOG_FORMAT=json) writes as keys of their own.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone

from identity.models import JobRun, JobRunStatus

logger = logging.getLogger("ct4.jobs")


class JobLocked(Exception):
    """Another run of a singleton job holds its advisory lock."""

    def __init__(self, name: str, holder: JobRun | None):
        self.name = name
        self.holder = holder
        since = f" (run #{holder.pk}, started {holder.started_at:%Y-%m-%d %H:%M:%S %Z})" if holder else ""
        super().__init__(f"{name} is already running{since}; this copy did nothing.")


def lock_key(name: str) -> int:
    """A stable 31-bit advisory-lock key per job name (same in every process and machine)."""
    return zlib.crc32(f"ct4:{name}".encode()) & 0x7FFFFFFF


def safe_error(exc: BaseException) -> str:
    """An error text fit for job_runs: PostgreSQL's DETAIL lines echo row values, so they go."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:500]


@dataclass
class RunHandle:
    """What a running job sees: its JobRun row and counters it can bump."""

    run: JobRun
    counts: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic, repr=False)
    last_batch_at: float | None = field(default=None, repr=False)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def add(self, **increments: int) -> None:
        for key, value in increments.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def save_progress(self) -> None:
        JobRun.objects.filter(pk=self.run.pk).update(counts=self.counts)

    def log_batch(self, batch_no: int, **figures: int) -> None:
        """One line per batch, counts only (never personal data)."""
        now = time.monotonic()
        batch_seconds = round(now - (self.last_batch_at or self.started), 3)
        self.last_batch_at = now
        text = " ".join(f"{key}={value}" for key, value in figures.items())
        logger.info("%s run=%s batch=%s %s", self.run.name, self.run.pk, batch_no, text,
                    extra=log_fields(self.run, "batch", batch=batch_no, counts=figures,
                                     batch_seconds=batch_seconds, elapsed_seconds=self.elapsed()))
        self.save_progress()


def log_fields(run: JobRun, event: str, **fields) -> dict:
    """The structured fields of a job's log line (names no LogRecord attribute uses)."""
    return {"job": run.name, "run_id": run.pk, "event": event, **fields}


def _try_lock(key: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        return bool(cursor.fetchone()[0])


def _unlock(key: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


@contextmanager
def job_run(
    name: str, *, params: dict | None = None, trigger: str = "command", singleton: bool = True,
    run_id: int | None = None,
) -> Iterator[RunHandle]:
    """Record a run of `name`; with `singleton`, hold its advisory lock for the whole run.

    `run_id` continues a row created earlier in state queued (the API creates it before the
    task starts, so callers can follow it). Raises JobLocked without doing anything when
    another process holds the lock. Call it outside a transaction, so the run row commits on
    its own and each batch inside commits apart from the others.
    """
    key = lock_key(name)
    if singleton and not _try_lock(key):
        holder = JobRun.objects.filter(name=name, status=JobRunStatus.RUNNING).order_by("-started_at").first()
        skipped = dict(name=name, status=JobRunStatus.SKIPPED, trigger=trigger, params=params or {},
                       finished_at=timezone.now(), error="another run holds the lock")
        if run_id:
            JobRun.objects.filter(pk=run_id).update(**skipped)
        else:
            JobRun.objects.create(**skipped, host=socket.gethostname(), pid=os.getpid())
        raise JobLocked(name, holder)
    if singleton:
        _close_abandoned(name)
    fields = dict(name=name, status=JobRunStatus.RUNNING, trigger=trigger, params=params or {},
                  started_at=timezone.now(), host=socket.gethostname(), pid=os.getpid())
    if run_id:
        JobRun.objects.filter(pk=run_id).update(**fields)
        run = JobRun.objects.get(pk=run_id)
    else:
        run = JobRun.objects.create(**fields)
    handle = RunHandle(run=run)
    logger.info("%s run=%s started", name, run.pk, extra=log_fields(run, "started", trigger=trigger))
    try:
        yield handle
    except BaseException as exc:
        JobRun.objects.filter(pk=run.pk).update(
            status=JobRunStatus.FAILED, finished_at=timezone.now(), counts=handle.counts, error=safe_error(exc)
        )
        logger.error("%s run=%s failed: %s", name, run.pk, safe_error(exc),
                     extra=log_fields(run, "failed", error_type=type(exc).__name__, counts=handle.counts,
                                      elapsed_seconds=handle.elapsed()))
        raise
    else:
        JobRun.objects.filter(pk=run.pk).update(
            status=JobRunStatus.SUCCEEDED, finished_at=timezone.now(), counts=handle.counts
        )
        figures = " ".join(f"{k}={v}" for k, v in handle.counts.items())
        logger.info("%s run=%s finished %s", name, run.pk, figures,
                    extra=log_fields(run, "finished", counts=handle.counts, elapsed_seconds=handle.elapsed()))
    finally:
        if singleton:
            _unlock(key)


ABANDONED = "abandoned: its process ended without finishing (killed or crashed); nothing after its last batch was kept"


def _close_abandoned(name: str) -> int:
    """Mark earlier 'running' rows of a singleton job failed: we hold its lock, so none of them runs.

    A process killed with SIGKILL (or a lost machine) never writes its end; without this its run
    would show 'running' forever in the API, the dashboard and the diagnosis.
    """
    return JobRun.objects.filter(name=name, status=JobRunStatus.RUNNING).update(
        status=JobRunStatus.FAILED, finished_at=timezone.now(), error=ABANDONED
    )


def progress_bar(total: int | None, desc: str, enabled: bool | None = None):
    """A tqdm bar on a terminal, a silent stand-in otherwise (cron, CI, the API)."""
    from tqdm import tqdm  # noqa: PLC0415

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit="lead", disable=not show, leave=False)


# What the matching jobs write. Autovacuum re-analyzes a table only after 10 % of it changed:
# 40,000 lead links among a million driver links never get there, and plans built on "there are
# no lead links" turn the runbooks' queries from milliseconds into minutes.
LINK_TABLES = ("canon.identity_links", "canon.identity_origin", "canon.identity_unmatched")
RECOVERY_TABLES = ("ops.identity_matching_jobs", "ops.cabinet_kpi_red_recovery_queue")


def tables_analyze(*tables: str) -> None:
    """Refresh the planner's statistics of tables a job just changed (sampled: fast at any size)."""
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ANALYZE {table}")
