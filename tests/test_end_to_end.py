"""`make demo` end to end: the run_demo command on a small generated park, the way the README runs it,
and what its report says checked against the database (the red KPI dropped, every guardrail OK, the
counts add up, the demo user can log in)."""

import re
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from identity.models import LEADS_TABLE, IdentityLink, JobRun
from recovery.guardrails import JOB_NAME as GUARDRAILS_JOB
from recovery.models import KpiRedRecoveryQueue
from recovery.sql_views import KpiRedBacklog

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

GUARDRAILS = ("verify_source_pk_consistency", "verify_kpi_red_drain", "verify_identity_origin_creation",
              "check_origin_missing", "check_identity_links_origins", "check_migrations")


def _figures(line: str) -> dict[str, int]:
    """`  recover: processed=80, matched=31, ...` -> {"processed": 80, "matched": 31, ...} (integers only)."""
    return {key: int(value) for key, value in re.findall(r"(\w+)=(-?\d+)(?=,|$)", line)}


def _line(lines: list[str], prefix: str) -> str:
    return next(line for line in lines if line.strip().startswith(prefix))


def test_run_demo_drains_the_red_kpi_passes_every_guardrail_and_its_counts_add_up(tmp_path):
    out = StringIO()
    call_command("run_demo", "--out", str(tmp_path), "--drivers", "300", "--leads", "80", "--seed", "7", stdout=out)
    lines = out.getvalue().splitlines()

    # Every CSV loaded whole.
    imports = [line for line in lines if line.strip().startswith("import ")]
    assert len(imports) == 4 and all(" 0 rejected" in line for line in imports), imports

    # The red KPI dropped, by as much as the report says, to what the backlog view holds now.
    before = int(re.search(r"3\. Red KPI before recovery: (\d+) leads", out.getvalue()).group(1))
    after, was, drained = map(int, re.search(r"4\. Red KPI after: (\d+) \(was (\d+); (\d+) drained\)",
                                             out.getvalue()).groups())
    assert was == before and drained == before - after and after < before
    assert after == KpiRedBacklog.objects.count()

    # Seed queued the whole backlog; recover tried each pending lead once and each matched or failed.
    seeded, recovered = _figures(_line(lines, "queue:")), _figures(_line(lines, "recover:"))
    assert seeded["backlog"] == before and seeded["pending"] == before
    assert recovered["processed"] == before == recovered["matched"] + recovered["failed"]
    assert recovered["matched"] > 0 and recovered["pending"] == 0

    # The reasons listed under "Red KPI after" are the failed queue rows, each lead once.
    section = lines[lines.index(next(line for line in lines if line.startswith("4. Red KPI after"))):]
    reasons = dict((m.group(2), int(m.group(1))) for line in section[:12]
                   if (m := re.match(r"\s+(\d+)\s+([A-Z_]+)\s", line)))
    failed = KpiRedRecoveryQueue.objects.filter(status="failed")
    assert sum(reasons.values()) == failed.count() > 0
    assert reasons == {reason: failed.filter(fail_reason=reason).count() for reason in reasons}
    # Every backlog lead recover did not match stays in the red KPI unless reconcile linked it since.
    linked_since = IdentityLink.objects.filter(source_table=LEADS_TABLE,
                                               source_pk__in=failed.values("lead_source_pk")).count()
    assert before == after + recovered["matched"] + linked_since
    # Every lead still in the backlog failed in the queue with a reason (none was left pending).
    assert set(KpiRedBacklog.objects.values_list("lead_source_pk", flat=True)) <= set(
        failed.values_list("lead_source_pk", flat=True))

    # Every guardrail ran and passed, and the run that recorded them succeeded.
    verdicts = [line.strip() for line in lines if re.match(r"\s+\[(OK|FAIL)\] ", line)]
    assert [v.split("]")[0] + "]" for v in verdicts] == ["[OK]"] * len(GUARDRAILS), verdicts
    assert [v.split()[1].rstrip(":") for v in verdicts] == list(GUARDRAILS)
    assert JobRun.objects.filter(name=GUARDRAILS_JOB).latest("started_at").status == "succeeded"

    # It ends with the demo user, printed once, who can log in.
    tail = lines[lines.index("6. Open the dashboard and the review list"):]
    password = next(line.split()[-1] for line in tail if line.strip().startswith("Password:"))
    assert any("http://127.0.0.1:8000/ops/" in line for line in tail)
    assert any(".venv/bin/python manage.py runserver" in line for line in tail)
    assert authenticate(username="demo", password=password) is not None
    assert sum(password in line for line in lines) == 1
