"""`make demo`: the product's main job end to end on a generated park, told in a few screenfuls.

generate -> import -> refresh the drivers index -> red KPI before -> seed -> recover -> reconcile
-> guardrails -> red KPI after, what drained and why the rest did not -> a demo user and where to
open the dashboard and the review list.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction

from identity.domain import lima_today
from identity.importing import source_import
from identity.index import drivers_index_refresh
from recovery.demo.generator import demo_data_generate
from recovery.guardrails import guardrails_run_all
from recovery.jobs.reconcile import pipeline_reconcile
from recovery.jobs.recover import queue_recover
from recovery.jobs.seed import queue_seed

IMPORT_ORDER = (("drivers", "drivers.csv"), ("cabinet_leads", "cabinet_leads.csv"), ("trips", "trips.csv"),
                ("claims", "claims.csv"))


@dataclass
class DemoReport:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def section(self, title: str) -> None:
        self.lines += ["", title, "-" * len(title)]

    def add(self, text: str = "") -> None:
        self.lines.append(text)


def red_kpi() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ops.v_cabinet_kpi_red_backlog")
        return cursor.fetchone()[0]


def _timed(report: DemoReport, label: str, step: Callable):
    started = time.monotonic()
    result = step()
    report.add(f"  {label:<34} {time.monotonic() - started:6.1f}s")
    return result


DEMO_USERNAME = "demo"


@transaction.atomic
def demo_user_reset(*, username: str = DEMO_USERNAME) -> tuple[AbstractBaseUser, str]:
    """Create the demo superuser, or give it a new random password: (user, password).

    The password exists only in the return value (it is stored hashed): the caller prints it once.
    """
    password = secrets.token_urlsafe(12)
    user, _ = get_user_model().objects.get_or_create(username=username)
    user.is_staff = user.is_superuser = user.is_active = True
    user.set_password(password)
    user.save()
    return user, password


def demo_user_instructions(*, username: str, password: str, base_url: str = "http://127.0.0.1:8000") -> list[str]:
    """How to open the product with the demo user: the server command and the URLs."""
    return [
        "  Start the server:  .venv/bin/python manage.py runserver",
        "  (with the same DATABASE_URL as this demo, if you set one)",
        f"  Ops dashboard:     {base_url}/ops/",
        f"  Review list:       {base_url}/review/",
        f"  Admin:             {base_url}/admin/",
        f"  Log in as:         {username}",
        f"  Password:          {password}",
        "  (random, shown only now; the next `make demo` sets a new one)",
    ]


def demo_run(*, out_dir: Path | None = None, drivers: int = 20_000, leads: int = 5_000, seed: int = 42,
             echo: Callable[[str], None] = print, demo_user: bool = True) -> DemoReport:
    """Run the whole pipeline on a fresh demo park; the report's lines are printed as they come."""

    report = DemoReport()
    out_dir = out_dir or Path(settings.BASE_DIR) / ".data" / "demo"
    report.section(f"1. A demo park: {drivers} drivers, {leads} leads (seed {seed}) in {out_dir}")
    summary = _timed(report, "generate", lambda: demo_data_generate(
        out_dir=out_dir, end_date=lima_today(), drivers=drivers, leads=leads, seed=seed))
    for kind, name in IMPORT_ORDER:
        result = source_import(kind=kind, path=out_dir / name)
        report.add(f"  import {result.summary()}")
        report.ok &= result.rejected == 0
    _flush(report, echo)

    report.section("2. Drivers index and persons")
    refresh = _timed(report, "refresh_drivers_index", drivers_index_refresh)
    report.add(f"  {refresh.changed} drivers indexed, {refresh.new_persons} persons "
               f"({refresh.joined_existing} records joined a person with the same document)")
    before = red_kpi()
    report.section(f"3. Red KPI before recovery: {before} leads without identity or claim")
    seeded = _timed(report, "seed_kpi_red_queue", queue_seed)
    report.add(f"  queue: {_figures(seeded)}")
    recovered = _timed(report, "recover_kpi_red_leads", lambda: queue_recover(limit=None))
    report.add(f"  recover: {_figures(recovered)}")
    reconciled = _timed(report, "reconcile_cabinet_leads_pipeline", pipeline_reconcile)
    report.add(f"  reconcile: {_figures(reconciled)}")
    _flush(report, echo)

    after = red_kpi()
    report.section(f"4. Red KPI after: {after} (was {before}; {before - after} drained)")
    for reason, count in _queue_reasons():
        report.add(f"  {count:>6}  {reason}  {REASON_HELP.get(reason, '')}")
    report.add(f"  (ground truth for checking the matcher: {out_dir / 'ground_truth.csv'}; "
               f"{summary['cases'].get('not_a_driver', 0) if isinstance(summary.get('cases'), dict) else '?'} "
               f"leads of this park never became drivers)")
    _flush(report, echo)

    report.section("5. Guardrails")
    for check in guardrails_run_all():
        report.add(f"  [{'OK' if check.ok else 'FAIL'}] {check.name}: {check.summary}")
        report.ok &= check.ok
    _flush(report, echo)

    if demo_user:
        user, password = demo_user_reset()
        report.section("6. Open the dashboard and the review list")
        for line in demo_user_instructions(username=user.get_username(), password=password):
            report.add(line)
        _flush(report, echo)
    return report


REASON_HELP = {
    "WEAK_MATCH_ONLY": "plausible candidate, not enough evidence: review in the admin",
    "CONFLICT_MULTIPLE_CANDIDATES": "two strong candidates are close: review in the admin",
    "NO_CANDIDATES": "no driver shares a key or a name: not (yet) a driver",
    "MISSING_IDENTIFIERS": "no usable phone, document, e-mail, plate or full name",
    "ERROR": "the matcher failed: see the job run",
}


def _queue_reasons() -> list[tuple[str, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT fail_reason, count(*) FROM ops.cabinet_kpi_red_recovery_queue
            WHERE status = 'failed' GROUP BY fail_reason ORDER BY count(*) DESC
            """
        )
        return cursor.fetchall()


def _figures(result) -> str:
    data = result.as_dict() if hasattr(result, "as_dict") else dict(result)
    return ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, (dict, list)))


def _flush(report: DemoReport, echo: Callable[[str], None]) -> None:
    for line in report.lines:
        echo(line)
    report.lines.clear()
