"""Operator reports: the red KPI's real impact of one seed + recover (SPEC §4.8) and the identity gap diagnosis (§4.9).

Each report is a function returning plain data (for --json and the API) and a renderer for the terminal.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from datetime import timedelta

from django.utils import timezone

from identity.domain import TODAY
from identity.models import LEADS_TABLE
from identity.runs import ABANDONED_SQL
from recovery.db import sql_rows
from recovery.guardrails import (
    identity_links_origins_check,
    identity_origin_creation_verify,
    origin_missing_check,
)
from recovery.jobs.recover import queue_recover
from recovery.jobs.seed import queue_seed
from recovery.queue import backlog_by_risk, backlog_count, queue_failed_by_reason
from recovery.status import job_last_outcomes

# The jobs whose freshness the diagnosis always shows (NEVER when they have not run yet),
# with the names their runs carry in ops.job_runs.
EXPECTED_JOBS = (
    "refresh_drivers_index", "seed_kpi_red_queue", "recover_kpi_red_leads", "retry_identity_matching",
    "reconcile_cabinet_leads_pipeline", "guardrails", "rules_precision",
)
FRESH_HOURS = 24

# The identity gap runbook's queries (../shared/seeds), verbatim.
RUNBOOK_FRESHNESS = """SELECT
    MAX(last_attempt_at) as last_run,
    COUNT(*) FILTER (WHERE last_attempt_at >= NOW() - INTERVAL '24 hours') as jobs_last_24h,
    COUNT(*) FILTER (WHERE status = 'matched' AND last_attempt_at >= NOW() - INTERVAL '24 hours') as matched_last_24h
FROM ops.identity_matching_jobs;"""

RUNBOOK_MATCHED_LAST_24H = """SELECT
    COUNT(*) as matched_last_24h,
    COUNT(DISTINCT matched_person_key) as unique_persons_matched
FROM ops.identity_matching_jobs
WHERE status = 'matched'
  AND last_attempt_at >= NOW() - INTERVAL '24 hours';"""


def _as_dict(result) -> dict:
    """A job's result as a dict, whatever its shape (dataclass, as_dict(), Counter, mapping)."""
    if hasattr(result, "as_dict"):
        return dict(result.as_dict())
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    if isinstance(result, Mapping):
        return dict(result)
    return dict(vars(result))


def queue_status_counts() -> dict[str, int]:
    return {r["status"]: r["n"] for r in sql_rows(
        "SELECT status, count(*) AS n FROM ops.cabinet_kpi_red_recovery_queue GROUP BY status ORDER BY status")}


# --- validate_kpi_red_impact ------------------------------------------------------------


def impact_validate(*, limit: int | None, trigger: str = "command") -> dict:
    """Backlog before, seed, recover up to `limit` leads, backlog after: the delta and why the rest failed.

    A real run by definition (it writes links, origins and queue rows, like the jobs it calls).
    """

    started = time.monotonic()
    before = backlog_count()
    seeded = _as_dict(queue_seed(trigger=trigger))
    recovered = _as_dict(queue_recover(limit=limit, trigger=trigger))
    after = backlog_count()
    return {
        "limit": limit,
        "backlog_before": before,
        "backlog_after": after,
        "delta": before - after,
        "seed": seeded,
        "recover": recovered,
        "matched_this_run": recovered.get("matched", 0),
        "failed_this_run": recovered.get("failed", 0),
        "failed_by_reason": dict(sorted(recovered.get("by_reason", {}).items(), key=lambda kv: (-kv[1], kv[0]))),
        "queue_now": queue_status_counts(),
        "queue_failed_by_reason": queue_failed_by_reason(),
        "seconds": round(time.monotonic() - started, 2),
    }


def _flat(data: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, (dict, list)))


def _reasons(reasons: dict[str, int], indent: str = "  ") -> list[str]:
    total = sum(reasons.values())
    if not total:
        return [f"{indent}(none)"]
    return [f"{indent}{reason:<30} {n:>8}  ({100 * n / total:.1f}%)" for reason, n in reasons.items()]


def impact_render(report: dict) -> str:
    lines = [
        "VALIDATION: real impact on the red KPI",
        f"BACKLOG BEFORE: {report['backlog_before']}",
        f"BACKLOG AFTER: {report['backlog_after']}",
        f"Delta: {report['delta']} ({report['backlog_before']} - {report['backlog_after']})",
        "",
        f"seed:    {_flat(report['seed'])}",
        f"recover: {_flat(report['recover'])}",
        f"this run: matched {report['matched_this_run']}, failed {report['failed_this_run']}",
        "failed by reason (this run):",
        *_reasons(report["failed_by_reason"]),
        f"queue now: {_flat(report['queue_now']) or 'empty'}; failed rows by reason:",
        *_reasons(report["queue_failed_by_reason"]),
    ]
    if report["delta"] <= 0 and report["failed_this_run"]:
        lines.append("The backlog did not drop: the reasons above say why (data, conflicts, or nothing to match).")
    return "\n".join(lines)


# --- diagnose_identity_gap ----------------------------------------------------------------


def gap_summary() -> dict:
    """Leads by gap_reason x risk_level (ops.v_identity_gap_analysis) and the share unresolved."""
    cells = sql_rows(
        """
        SELECT gap_reason, risk_level, count(*) AS leads
        FROM ops.v_identity_gap_analysis GROUP BY gap_reason, risk_level ORDER BY gap_reason, risk_level
        """
    )
    total = sum(c["leads"] for c in cells)
    unresolved = sum(c["leads"] for c in cells if c["gap_reason"] != "resolved")
    by_reason: dict[str, int] = {}
    for cell in cells:
        by_reason[cell["gap_reason"]] = by_reason.get(cell["gap_reason"], 0) + cell["leads"]
    return {
        "total_leads": total, "unresolved": unresolved,
        "pct_unresolved": round(100 * unresolved / total, 2) if total else 0.0,
        "by_reason": by_reason, "by_reason_risk": cells,
    }


def jobs_freshness() -> list[dict]:
    """Per job name: its last run and status, its last success, and the badge OK / STALE / NEVER."""
    rows = {r["name"]: r for r in job_last_outcomes()}
    fresh_after = timezone.now() - timedelta(hours=FRESH_HOURS)
    out = []
    for name in [*EXPECTED_JOBS, *sorted(set(rows) - set(EXPECTED_JOBS))]:
        row = rows.get(name, {"name": name, "last_run_at": None, "last_finished_at": None, "last_status": None,
                              "last_success_at": None})
        row = {k: row[k] for k in ("name", "last_run_at", "last_finished_at", "last_status", "last_success_at")}
        if row["last_run_at"] is None:
            badge = "NEVER"
        elif row["last_success_at"] is not None and row["last_success_at"] >= fresh_after:
            badge = "OK"
        else:
            badge = "STALE"
        out.append({**row, "badge": badge})
    return out


def jobs_volume() -> list[dict]:
    """Runs and leads processed / matched per job in the last 24 h and 7 days (from job-run counts)."""
    return sql_rows(
        f"""
        WITH runs AS (
            SELECT name, started_at,
                   coalesce((counts->>'processed')::numeric, 0)::bigint AS processed,
                   -- jobs name their drained leads matched, linked or newly_linked
                   coalesce((counts->>'matched')::numeric, (counts->>'linked')::numeric,
                            (counts->>'newly_linked')::numeric, 0)::bigint AS matched,
                   {ABANDONED_SQL} AS abandoned
            FROM ops.job_runs
            WHERE started_at >= now() - interval '7 days' AND status <> 'skipped'
        )
        SELECT name,
               -- an abandoned run is no run of its job; the batches it committed are work done
               count(*) FILTER (WHERE started_at >= now() - interval '24 hours' AND NOT abandoned) AS runs_24h,
               coalesce(sum(processed) FILTER (WHERE started_at >= now() - interval '24 hours'), 0) AS processed_24h,
               coalesce(sum(matched) FILTER (WHERE started_at >= now() - interval '24 hours'), 0) AS matched_24h,
               count(*) FILTER (WHERE NOT abandoned) AS runs_7d,
               coalesce(sum(processed), 0) AS processed_7d,
               coalesce(sum(matched), 0) AS matched_7d
        FROM runs GROUP BY name ORDER BY name
        """
    )


def unmatched_open_by_reason() -> dict[str, int]:
    """Open canon.identity_unmatched rows of leads by reason code, most frequent first."""
    return {r["reason_code"]: r["n"] for r in sql_rows(
        """
        SELECT reason_code, count(*) AS n FROM canon.identity_unmatched
        WHERE source_table = %s AND status = 'open'
        GROUP BY reason_code ORDER BY n DESC, reason_code
        """,
        [LEADS_TABLE],
    )}


def top_fail_reasons() -> dict:
    return {"queue": queue_failed_by_reason(), "identity_unmatched": unmatched_open_by_reason()}


def red_kpi_now() -> dict:
    by_risk = backlog_by_risk()
    last_7_days = sql_rows(
        f"""
        SELECT metric_date, backlog_start, new_backlog_in, matched_out, backlog_end, net_change, top_fail_reason
        FROM ops.v_cabinet_kpi_red_recovery_metrics_daily
        WHERE metric_date > {TODAY} - 7
        ORDER BY metric_date
        """
    )
    return {"backlog": sum(by_risk.values()), "by_risk": by_risk, "last_7_days": last_7_days}


def gap_diagnose() -> dict:
    """Everything an operator asks when the gap does not close, in one dict (SPEC §4.9)."""
    integrity = [identity_links_origins_check(), origin_missing_check(), identity_origin_creation_verify()]
    return {
        "generated_at": timezone.now(),
        "gap": gap_summary(),
        "freshness": {"jobs": jobs_freshness(), "identity_matching_jobs": sql_rows(RUNBOOK_FRESHNESS)[0]},
        "matched_last_24h": sql_rows(RUNBOOK_MATCHED_LAST_24H)[0],
        "fail_reasons": top_fail_reasons(),
        "volume": jobs_volume(),
        "integrity": [
            {"name": c.name, "ok": c.ok, "summary": c.summary, "counts": c.details["counts"],
             "offenders": c.offenders}
            for c in integrity
        ],
        "red_kpi": red_kpi_now(),
    }


def _when(value) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M}" if value else "-"


def gap_render(report: dict) -> str:
    gap = report["gap"]
    lines = [f"IDENTITY GAP DIAGNOSIS ({_when(report['generated_at'])})", "",
             f"1. Gap: {gap['unresolved']} of {gap['total_leads']} leads unresolved ({gap['pct_unresolved']}%)"]
    lines += [f"  {c['gap_reason']:<22} {c['risk_level']:<7} {c['leads']:>8}" for c in gap["by_reason_risk"]]

    lines += ["", "2. Job freshness (OK = a successful run in the last 24 h)"]
    lines += [f"  [{j['badge']:<5}] {j['name']:<34} last run {_when(j['last_run_at'])} ({j['last_status'] or '-'}), "
              f"last success {_when(j['last_success_at'])}" for j in report["freshness"]["jobs"]]
    tracking = report["freshness"]["identity_matching_jobs"]
    lines.append(f"  ops.identity_matching_jobs: last attempt {_when(tracking['last_run'])}, "
                 f"{tracking['jobs_last_24h']} leads tried in 24 h, {tracking['matched_last_24h']} matched")

    matched = report["matched_last_24h"]
    lines += ["", f"3. Matched last 24 h: {matched['matched_last_24h']} leads, "
                  f"{matched['unique_persons_matched']} unique persons"]

    reasons = report["fail_reasons"]
    lines += ["", "4. Top fail reasons", "  red-KPI queue (failed rows):", *_reasons(reasons["queue"], "    "),
              "  canon.identity_unmatched (open):", *_reasons(reasons["identity_unmatched"], "    ")]

    lines += ["", "5. Volume processed (job runs)"]
    lines += [f"  {v['name']:<34} 24 h: {v['runs_24h']} runs, {v['processed_24h']} processed, "
              f"{v['matched_24h']} matched | 7 d: {v['runs_7d']} runs, {v['processed_7d']} processed, "
              f"{v['matched_7d']} matched"
              for v in report["volume"]] or ["  no runs in the last 7 days"]

    lines += ["", "6. Link / origin integrity"]
    for check in report["integrity"]:
        lines.append(f"  [{'OK' if check['ok'] else 'FAIL'}] {check['name']}: {check['summary']}")
        if not check["ok"]:
            lines.append(f"      e.g. {', '.join(check['offenders'][:10])} (run manage.py {check['name']})")

    red = report["red_kpi"]
    lines += ["", f"7. Red KPI now: {red['backlog']} leads without identity or claim "
                  f"({', '.join(f'{k} {v}' for k, v in red['by_risk'].items()) or 'empty'})",
              "  date        start      in     out     end  net  top fail reason"]
    lines += [f"  {d['metric_date']}  {d['backlog_start']:>6} {d['new_backlog_in']:>6} {d['matched_out']:>6} "
              f"{d['backlog_end']:>7} {d['net_change']:>4}  {d['top_fail_reason'] or '-'}" for d in red["last_7_days"]]
    return "\n".join(lines)
