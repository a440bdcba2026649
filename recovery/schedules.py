"""The django-q2 schedules of SPEC §7, declared once and synced into the database by name.

`setup_schedules` calls `schedules_sync`: it creates missing schedules, updates changed ones,
and removes schedules of ours (names starting with "ct4: ") that are no longer declared.
Cron expressions are read in settings.TIME_ZONE (America/Lima), as django-q2 does.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django_q.models import Schedule

PREFIX = "ct4: "
FUNC = "recovery.tasks.job_task"


@dataclass(frozen=True)
class ScheduleSpec:
    job: str
    cron: str
    kwargs: dict
    help: str

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.job}"


def declared_schedules() -> tuple[ScheduleSpec, ...]:
    recover_limit = int(settings.CT4.get("SCHEDULED_RECOVERY_LIMIT", 5000))
    return (
        ScheduleSpec("seed_kpi_red_queue", "0 * * * *", {}, "hourly: backlog leads into the queue"),
        ScheduleSpec("recover_kpi_red_leads", "20 */2 * * *", {"limit": recover_limit},
                     f"every 2 hours: match up to {recover_limit} queued leads"),
        ScheduleSpec("reconcile_cabinet_leads_pipeline", "*/15 * * * *", {},
                     "every 15 minutes: recent and limbo leads, claims"),
        ScheduleSpec("retry_identity_matching", "0 2 * * *", {}, "daily 02:00: every unresolved lead"),
        ScheduleSpec("guardrails", "40 * * * *", {}, "hourly: the verification checks"),
        ScheduleSpec("rules_precision", "50 * * * *", {},
                     "hourly: demote a link rule whose audited precision fell below the target"),
    )


@dataclass(frozen=True)
class ScheduleChange:
    action: str  # create, update, delete, unchanged
    name: str
    detail: str = ""

    def as_dict(self) -> dict:
        return {"action": self.action, "name": self.name, "detail": self.detail}


def _wanted_fields(spec: ScheduleSpec) -> dict:
    return {
        "func": FUNC,
        "args": repr(spec.job),
        "kwargs": repr({"trigger": "schedule", **spec.kwargs}),
        "schedule_type": Schedule.CRON,
        "cron": spec.cron,
        "repeats": -1,
    }


def schedules_sync(*, dry_run: bool = False) -> list[ScheduleChange]:
    """Make the database's ct4 schedules match the declared ones; return what changed (or would)."""
    changes: list[ScheduleChange] = []
    declared = {spec.name: spec for spec in declared_schedules()}
    with transaction.atomic():
        existing = {s.name: s for s in Schedule.objects.select_for_update().filter(name__startswith=PREFIX)}
        for name, spec in declared.items():
            wanted = _wanted_fields(spec)
            current = existing.get(name)
            if current is None:
                changes.append(ScheduleChange("create", name, f"{spec.cron} ({spec.help})"))
                if not dry_run:
                    # save() computes next_run from the cron expression.
                    Schedule(name=name, **wanted).save()
                continue
            differs = {k: v for k, v in wanted.items() if getattr(current, k) != v}
            if not differs:
                changes.append(ScheduleChange("unchanged", name, spec.cron))
                continue
            changes.append(ScheduleChange("update", name, ", ".join(
                f"{k}: {getattr(current, k)!r} -> {v!r}" for k, v in differs.items())))
            if not dry_run:
                for key, value in differs.items():
                    setattr(current, key, value)
                if "cron" in differs:
                    current.next_run = current.calculate_next_run()
                current.save()
        for name, stale in existing.items():
            if name not in declared:
                changes.append(ScheduleChange("delete", name, "no longer declared"))
                if not dry_run:
                    stale.delete()
    return changes


def job_schedule(job: str):
    """The django-q2 schedule that runs `job`, or None when it is not scheduled."""
    return Schedule.objects.filter(name=f"{PREFIX}{job}").exclude(repeats=0).first()


def schedules_count() -> int:
    """How many ct4 schedules are active (0: nothing runs the jobs unattended)."""
    return Schedule.objects.filter(name__startswith=PREFIX).exclude(repeats=0).count()
