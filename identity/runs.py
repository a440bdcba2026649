"""How every job runs: a row in ops.job_runs, an optional singleton advisory lock, batch logs,
and how its command ends (JobCommand: --json, --dry-run, the exit statuses 0/1/2/3).

Services wrap their work in `job_run(...)`; the commands, the schedules and the API all end up
here, so freshness badges and "a second copy exits at once" hold whatever started the job.
Each log line also carries its figures as `extra=` fields (job, run_id, event, batch, counts,
seconds), which the JSON log format (CT4_LOG_FORMAT=json) writes as keys of their own.
A batch that loses its database connection goes through `reconnecting(...)`: rolled back,
reconnected with bounded backoff (CT4_DB_RETRY_SECONDS), run again.
A run that succeeded (and was committed: not a rolled-back dry run) sends `job_run_succeeded`, so a
higher layer can follow it up without this one importing it (recovery draws an audit sample).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone
from tqdm import tqdm

from identity.models import JobRun, JobRunStatus

logger = logging.getLogger("ct4.jobs")
T = TypeVar("T")

# A live run holds the session advisory lock (RUN_LOCK_CLASS, its id): the lock ends with its
# session, so a 'running' row nobody holds it for was left by a dead process (any job, any machine).
RUN_LOCK_CLASS = zlib.crc32(b"ct4:job_run") & 0x7FFFFFFF
ABANDONED_PREFIX = "abandoned:"
ABANDONED = (f"{ABANDONED_PREFIX} its process ended without finishing (killed, crashed or cut off from the "
             "database); nothing after its last batch was kept")
# Abandoned runs are no outcome of their job: freshness, the diagnosis and /metrics leave them out.
ABANDONED_RUNS = Q(status=JobRunStatus.FAILED, error__startswith=ABANDONED_PREFIX)
ABANDONED_SQL = f"(status = '{JobRunStatus.FAILED}' AND starts_with(error, '{ABANDONED_PREFIX}'))"
# Connection exceptions (class 08), the server shutting down or starting (57P01..57P03); an
# OperationalError without SQLSTATE comes from the client library (connection refused or closed).
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")
DEFAULT_DB_RETRY_SECONDS = 60
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 8.0

# Sent (sender=JobRun) once a run is recorded succeeded and committed, with name, run_id, params and
# counts. send_robust: a receiver's failure is logged and never fails the job (it succeeded already).
job_run_succeeded = Signal()


class DatabaseUnavailable(Exception):
    """The database stayed away longer than CT4_DB_RETRY_SECONDS (or the run lost its lock meanwhile)."""


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


def connection_lost(exc: BaseException) -> bool:
    """True when `exc` means the connection or the server went away, not that a statement failed.

    Django wraps psycopg's errors (the original is the cause); COPY raises psycopg's own.
    """
    if not isinstance(exc, OperationalError | InterfaceError | psycopg.OperationalError | psycopg.InterfaceError):
        return False
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc.__cause__, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _LOST_SQLSTATES


@dataclass
class RunHandle:
    """What a running job sees: its JobRun row and counters it can bump."""

    run: JobRun
    counts: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic, repr=False)
    last_batch_at: float | None = field(default=None, repr=False)
    singleton_key: int | None = field(default=None, repr=False)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def add(self, **increments: int) -> None:
        for key, value in increments.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def save_progress(self) -> None:
        reconnecting(lambda: JobRun.objects.filter(pk=self.run.pk).update(counts=self.counts), handle=self)

    def locks_take(self) -> bool:
        """On a new connection, take again the session locks the lost one held (the job's singleton
        lock, the run's own) and put the row back to running should a sweep have closed it meanwhile.
        False while another session holds one: the old one not yet ended, or another copy of the job."""
        if self.singleton_key is not None and not _try_lock(self.singleton_key):
            return False
        if not _run_lock(self.run.pk):
            return False
        JobRun.objects.filter(pk=self.run.pk).update(status=JobRunStatus.RUNNING, finished_at=None, error="")
        return True

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


def _run_lock(run_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [RUN_LOCK_CLASS, run_id & 0x7FFFFFFF])
        return bool(cursor.fetchone()[0])


def _run_unlock(run_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [RUN_LOCK_CLASS, run_id & 0x7FFFFFFF])


def runs_abandoned_close() -> int:
    """Mark failed ("abandoned: ...") every 'running' run, of any job, whose process is gone.

    A process killed with SIGKILL, a lost machine or a database that never came back leaves its
    row 'running'; its session, and with it its run lock, ended. Every job run calls this on start
    (the guardrails too), so a ghost does not outlive the next run of anything.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE ops.job_runs r SET status = %(failed)s, finished_at = now(), error = %(error)s
            WHERE r.status = %(running)s AND NOT EXISTS (
                SELECT 1 FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid = %(lock_class)s::oid AND l.objid = (r.id & 2147483647)::oid)
            """,
            {"failed": JobRunStatus.FAILED, "running": JobRunStatus.RUNNING, "error": ABANDONED,
             "lock_class": RUN_LOCK_CLASS},
        )
        return cursor.rowcount


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
    # A database down at the start fails here, at once: a one-line exit, nothing to retry.
    connection.ensure_connection()

    def start() -> JobRun:
        # Retried whole on a connection lost after that (the session's locks went with it, so each
        # try takes them again): a cut between two of these statements once ended a job whose
        # database was back a moment later (CI, test_db_restart).
        if singleton and not _try_lock(key):
            _run_skipped_record(name, params=params, trigger=trigger, run_id=run_id)
        runs_abandoned_close()
        return _run_start(name, params=params, trigger=trigger, run_id=run_id)

    run = reconnecting(start)
    handle = RunHandle(run=run, singleton_key=key if singleton else None)
    logger.info("%s run=%s started", name, run.pk, extra=log_fields(run, "started", trigger=trigger))
    succeeded = False
    try:
        yield handle
    except BaseException as exc:
        # Unrecorded (the database is away), the row stays 'running' until a later run marks it abandoned.
        recorded = _run_failed_record(run, handle, exc)
        logger.error("%s run=%s failed: %s", name, run.pk, safe_error(exc),
                     extra=log_fields(run, "failed", error_type=type(exc).__name__, counts=handle.counts,
                                      elapsed_seconds=handle.elapsed(), recorded=recorded))
        raise
    else:
        reconnecting(lambda: JobRun.objects.filter(pk=run.pk).update(
            status=JobRunStatus.SUCCEEDED, finished_at=timezone.now(), counts=handle.counts), handle=handle)
        figures = " ".join(f"{k}={v}" for k, v in handle.counts.items())
        logger.info("%s run=%s finished %s", name, run.pk, figures,
                    extra=log_fields(run, "finished", counts=handle.counts, elapsed_seconds=handle.elapsed()))
        succeeded = True
    finally:
        try:
            _run_unlock(run.pk)
            if singleton:
                _unlock(key)
        except (DatabaseError, psycopg.Error):
            pass  # a lost connection took its session's locks with it
    # After the locks are released, so what the receivers do never holds this job's lock. Inside an
    # outer transaction (a dry run, rolled_back) nothing the run wrote is kept or visible to others: no signal.
    if succeeded and not connection.in_atomic_block:
        job_run_succeeded_send(run, handle)


def job_run_succeeded_send(run: JobRun, handle: RunHandle) -> None:
    """Send job_run_succeeded for a finished run; a receiver that raises gets one error line, never the job."""
    for receiver, outcome in job_run_succeeded.send_robust(
            sender=JobRun, name=run.name, run_id=run.pk, params=dict(run.params or {}), counts=dict(handle.counts)):
        if isinstance(outcome, Exception):
            logger.error("%s run=%s: a receiver of job_run_succeeded failed (%s): %s", run.name, run.pk,
                         getattr(receiver, "__qualname__", receiver), safe_error(outcome),
                         extra=log_fields(run, "after_run_failed", error_type=type(outcome).__name__))


def _run_skipped_record(name: str, *, params: dict | None, trigger: str, run_id: int | None) -> NoReturn:
    """Another run holds the lock: record this one as skipped and raise JobLocked."""
    holder = JobRun.objects.filter(name=name, status=JobRunStatus.RUNNING).order_by("-started_at").first()
    skipped = dict(name=name, status=JobRunStatus.SKIPPED, trigger=trigger, params=params or {},
                   finished_at=timezone.now(), error="another run holds the lock")
    if run_id:
        JobRun.objects.filter(pk=run_id).update(**skipped)
    else:
        JobRun.objects.create(**skipped, host=socket.gethostname(), pid=os.getpid())
    raise JobLocked(name, holder)


def _run_start(name: str, *, params: dict | None, trigger: str, run_id: int | None) -> JobRun:
    """Write this run's row as running, with its run lock taken."""
    fields = dict(name=name, status=JobRunStatus.RUNNING, trigger=trigger, params=params or {},
                  started_at=timezone.now(), host=socket.gethostname(), pid=os.getpid())
    # The run lock is taken before the row commits: no sweep ever sees the row without it.
    with transaction.atomic():
        if run_id:
            JobRun.objects.filter(pk=run_id).update(**fields)
            run = JobRun.objects.get(pk=run_id)
        else:
            run = JobRun.objects.create(**fields)
        _run_lock(run.pk)
    return run


def _run_failed_record(run: JobRun, handle: RunHandle, exc: BaseException) -> bool:
    """Write the run's failure; on a lost connection, once more on a new one. False if it could not."""
    for attempt in (1, 2):
        try:
            JobRun.objects.filter(pk=run.pk).update(
                status=JobRunStatus.FAILED, finished_at=timezone.now(), counts=handle.counts, error=safe_error(exc))
            return True
        except (DatabaseError, psycopg.Error) as error:
            if attempt == 2 or not connection_lost(error) or connection.in_atomic_block:
                return False
            connection.close()
    return False


def reconnecting(work: Callable[[], T], *, handle: RunHandle | None = None) -> T:
    """Run `work` (one batch: its own transaction, or a single statement); when the connection is
    lost it rolled back whole, so reconnect with bounded backoff and run it again.

    The budget (CT4_DB_RETRY_SECONDS, counted from the first loss) ends with DatabaseUnavailable.
    After a reconnect the run takes its session locks again (RunHandle.locks_take). Inside an
    outer transaction nothing is retried: its earlier work is gone with the connection.
    """
    budget = float(getattr(settings, "CT4_DB_RETRY_SECONDS", DEFAULT_DB_RETRY_SECONDS))
    deadline = None
    delay = _BACKOFF_FIRST
    while True:
        try:
            return work()
        except (DatabaseError, psycopg.Error) as exc:
            if not connection_lost(exc) or connection.in_atomic_block:
                raise
            now = time.monotonic()
            deadline = deadline or now + budget
            _log_lost(handle, exc)
            cause = safe_error(exc)
            while True:
                if now >= deadline:
                    raise DatabaseUnavailable(
                        f"{_who(handle)}: database unreachable for {budget:g} s (CT4_DB_RETRY_SECONDS), "
                        f"the batch in flight rolled back: {cause}") from None
                time.sleep(min(delay, deadline - now))
                delay = min(2 * delay, _BACKOFF_MAX)
                connection.close()
                try:
                    connection.ensure_connection()
                    if handle is None or handle.locks_take():
                        break
                    cause = "another session still holds the run's lock"
                except (DatabaseError, psycopg.Error) as again:
                    if not connection_lost(again):
                        raise
                    cause = safe_error(again)
                now = time.monotonic()
            logger.warning("%s reconnected; the batch in flight runs again", _who(handle),
                           extra=log_fields(handle.run, "reconnected") if handle else {})


def _who(handle: RunHandle | None) -> str:
    return f"{handle.run.name} run={handle.run.pk}" if handle else "ct4"


def _log_lost(handle: RunHandle | None, exc: BaseException) -> None:
    logger.warning("%s lost its database connection (%s); the batch in flight rolled back, reconnecting",
                   _who(handle), safe_error(exc),
                   extra=log_fields(handle.run, "connection_lost", error_type=type(exc).__name__) if handle else {})


def progress_bar(total: int | None, desc: str, enabled: bool | None = None):
    """A tqdm bar on a terminal, a silent stand-in otherwise (cron, CI, the API)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit="lead", disable=not show, leave=False)


# What the matching jobs write. Autovacuum re-analyzes a table only after 10 % of it changed:
# 40,000 lead links among a million driver links never get there, and plans built on "there are
# no lead links" turn the runbooks' queries from milliseconds into minutes.
LINK_TABLES = ("canon.identity_links", "canon.identity_origin", "canon.identity_unmatched")


# A table is analyzed after a job once this many of its rows changed since its last ANALYZE: a plan
# that assumes a few thousand fewer rows stays cheap, and a run of 1,000 leads does not pay half a
# second for ANALYZE of three tables at 1M (bench/matching_speed.py, "1,000 more leads").
ANALYZE_MIN_CHANGED = 5_000


def tables_analyze(*tables: str, changed: int | None = None) -> list[str]:
    """Refresh the planner's statistics of tables a job just changed (sampled: fast at any size).

    With `changed` (the rows this run wrote in each table, at most), a table is analyzed when that, or
    the rows changed since its last ANALYZE as the statistics system counts them (other runs' small
    writes add up there; its counts may lag a run's own by a second), reach ANALYZE_MIN_CHANGED.
    Without it, every table is. Returns the tables analyzed."""

    def analyze() -> list[str]:
        with connection.cursor() as cursor:
            todo = list(tables)
            if changed is not None and changed < ANALYZE_MIN_CHANGED:
                cursor.execute(
                    "SELECT t FROM unnest(%s::text[]) AS t JOIN pg_stat_all_tables s ON s.relid = t::regclass "
                    "WHERE s.n_mod_since_analyze + %s >= %s", [todo, changed, ANALYZE_MIN_CHANGED])
                todo = [row[0] for row in cursor.fetchall()]
            for table in todo:
                cursor.execute(f"ANALYZE {table}")
            return todo

    return reconnecting(analyze)


def rolled_back(work: Callable[[], T]) -> T:
    """Run `work` in one transaction and roll back everything it wrote (its job run row too): the
    dry run of a job that changes data. Its result says what the job did before the rollback. The
    job holds its locks for the whole run and nothing is retried after a lost connection."""
    with transaction.atomic():
        result = work()
        transaction.set_rollback(True)
    return result


# --- How a command ends ---------------------------------------------------------------------

# 0 done; 1 done with problems (a failed check, rejected rows) or the database stayed away;
# 2 bad arguments or unusable input; 3 another copy of this singleton holds its lock (nothing done).
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


def command_exit(status: int, message: str = "") -> NoReturn:
    """The one way a ct4 command ends with a non-zero status. With a message, Django prints it on
    stderr as a CommandError (one line, no traceback); without, the command printed its report already."""
    if message:
        raise CommandError(message, returncode=status)
    raise SystemExit(status)


class JobCommand(BaseCommand):
    """A thin command over one service call; subclasses implement run() and summary(), and
    exit_status() when a result can mean "done with problems".

    `rollback_dry_run = True` adds --dry-run: the job runs as usual inside one transaction that is
    then rolled back (rolled_back), and the summary says what it did and that nothing was kept.
    """

    rollback_dry_run = False

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
        if self.rollback_dry_run:
            parser.add_argument("--dry-run", action="store_true",
                                help="run the job in one transaction, report what it did, then roll it all back "
                                     "(nothing is written, not even its job run)")

    def handle(self, *args, **options):
        dry_run = self.rollback_dry_run and options.get("dry_run")
        try:
            result = rolled_back(lambda: self.run(**options)) if dry_run else self.run(**options)
        except JobLocked as exc:
            command_exit(EXIT_LOCKED, str(exc))
        except DatabaseUnavailable as exc:
            command_exit(EXIT_PROBLEMS, str(exc))
        except (DatabaseError, psycopg.Error) as exc:
            # Lost outside a batch (before the first, say): nothing to retry, one line to say why.
            if not connection_lost(exc):
                raise
            command_exit(EXIT_PROBLEMS, f"database unreachable: {safe_error(exc)}")
        if options["json"]:
            figures = self.as_json(result)
            if dry_run:
                figures = {**figures, "dry_run": True}
            self.stdout.write(json.dumps(figures, default=str, sort_keys=True))
        else:
            self.stdout.write(("dry run, rolled back: " if dry_run else "") + self.summary(result))
        if status := self.exit_status(result):
            command_exit(status)

    def run(self, **options):
        raise NotImplementedError

    def as_json(self, result):
        return result.as_dict() if hasattr(result, "as_dict") else result

    def summary(self, result) -> str:
        return " ".join(f"{key}={value}" for key, value in dict(result).items())

    def exit_status(self, result) -> int:
        return EXIT_OK
