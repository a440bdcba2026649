"""What django-q2 runs: one entry point per job, over the same service functions as the commands.

Schedules and the API's POST calls enqueue `job_task(<job name>, ...)`. The services record
the run in ops.job_runs and take their advisory locks, so a scheduled run, an API run and a
command run of the same singleton job never overlap, on one machine or several.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django_q.tasks import async_task

from identity.index import drivers_index_refresh
from identity.models import JobRun, JobRunStatus
from identity.runs import JobLocked, safe_error
from recovery.guardrails import guardrails_run_all
from recovery.jobs.reconcile import pipeline_reconcile
from recovery.jobs.recover import queue_recover
from recovery.jobs.retry import identity_matching_retry
from recovery.queue import queue_seed
from recovery.review.demotion import rules_precision_check

logger = logging.getLogger("ct4.jobs")


@dataclass(frozen=True)
class TaskJob:
    """A job the task queue may run: the service to call and the parameters it accepts."""

    name: str
    service: Callable[..., object]
    params: frozenset[str]


def _seed(**kwargs):
    return queue_seed(progress=False, **kwargs)


def _recover(**kwargs):
    # One process: a django-q2 worker is itself a child process and scales by cluster workers.
    return queue_recover(progress=False, workers=1, **kwargs)


def _retry(**kwargs):
    return identity_matching_retry(progress=False, **kwargs)


def _reconcile(**kwargs):
    return pipeline_reconcile(progress=False, **kwargs)


def _guardrails(**kwargs):
    results = guardrails_run_all(**kwargs)
    return {"ok": all(r.ok for r in results), "failed": [r.name for r in results if not r.ok]}


def _rules_precision(**kwargs):
    return rules_precision_check(**kwargs)


def _index_refresh(**kwargs):
    return drivers_index_refresh(**kwargs)


TASK_JOBS: dict[str, TaskJob] = {
    job.name: job
    for job in (
        TaskJob("seed_kpi_red_queue", _seed, frozenset({"batch_size"})),
        TaskJob("recover_kpi_red_leads", _recover, frozenset({"limit", "batch_size"})),
        TaskJob("retry_identity_matching", _retry, frozenset({"limit", "risk_level", "gap_reason", "batch_size"})),
        TaskJob("reconcile_cabinet_leads_pipeline", _reconcile,
                frozenset({"recent_days", "process_recent", "process_limbo", "limbo_stages", "refresh_index"})),
        TaskJob("guardrails", _guardrails, frozenset({"n"})),
        TaskJob("refresh_drivers_index", _index_refresh, frozenset({"full"})),
        TaskJob("rules_precision", _rules_precision, frozenset({"dry_run"})),
    )
}


def job_task(job: str, *, run_id: int | None = None, trigger: str = "schedule", **params) -> dict:
    """Run one job by name and return its summary (django-q2 stores it as the task result).

    A busy singleton is not an error here: the run is recorded as skipped and the task
    succeeds, so a schedule that fires during a long run does not pile up failures.
    """
    if job not in TASK_JOBS:
        raise ValueError(f"unknown job {job!r}; known: {', '.join(sorted(TASK_JOBS))}")
    spec = TASK_JOBS[job]
    if unknown := set(params) - spec.params:
        raise ValueError(f"{job} does not take {', '.join(sorted(unknown))}")
    try:
        result = spec.service(trigger=trigger, run_id=run_id, **params)
    except JobLocked as exc:
        logger.info("%s skipped: %s", job, exc)
        return {"job": job, "skipped": True, "reason": "another run holds the lock"}
    except Exception as exc:
        # The service marked its run failed; a run that never started (bad parameters) is
        # marked here so the API's job endpoint does not show it queued forever.
        if run_id is not None:
            JobRun.objects.filter(pk=run_id, status=JobRunStatus.QUEUED).update(
                status=JobRunStatus.FAILED, error=safe_error(exc)
            )
        raise
    summary = result.as_dict() if hasattr(result, "as_dict") else result
    return {"job": job, **summary} if isinstance(summary, dict) else {"job": job, "result": summary}


def job_enqueue(job: str, *, params: dict, trigger: str = "api") -> JobRun:
    """Record a queued run of `job` and hand it to the task queue; the caller follows the run's id."""
    if job not in TASK_JOBS:
        raise ValueError(f"unknown job {job!r}")
    run = JobRun.objects.create(name=job, status=JobRunStatus.QUEUED, trigger=trigger, params=params)
    async_task("recovery.tasks.job_task", job, run_id=run.pk, trigger=trigger, **params,
               q_options={"task_name": f"{job} run {run.pk}", "group": job})
    run.refresh_from_db()
    return run
