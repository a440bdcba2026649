"""Reads the API and the dashboard share: metrics over a date range, the gap summary, job runs.

Each returns plain data (dicts, lists, querysets) that a serializer or template renders as is.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.db.models import QuerySet

from identity.domain import lima_today
from identity.models import JobRun
from recovery.db import sql_rows
from recovery.queue import backlog_by_risk, queue_failed_by_reason
from recovery.reports import RUNBOOK_MATCHED_LAST_24H, gap_summary
from recovery.sql_views import CabinetFinancial14d, CabinetLeadsLimbo, FunnelAuditWeekly, KpiRedRecoveryMetricsDaily
from recovery.status import matching_freshness, recovery_status

DEFAULT_METRICS_DAYS = 30


def backlog_now() -> dict:
    """The red KPI now: leads in ops.v_cabinet_kpi_red_backlog, in total and by risk level."""
    by_risk = backlog_by_risk()
    return {"total": sum(by_risk.values()), "by_risk": by_risk}


def fail_reasons_top(*, limit: int = 5) -> list[dict]:
    """Why queued leads failed, most frequent first (failed rows of the red-KPI queue)."""
    return [{"reason": reason, "leads": n} for reason, n in list(queue_failed_by_reason().items())[:limit]]


def metrics_daily(*, date_from: date | None = None, date_to: date | None = None) -> dict:
    """Daily red-KPI rows for [date_from, date_to] (default: the last 30 days), the backlog, top reasons."""
    date_to = date_to or lima_today()
    date_from = date_from or date_to - timedelta(days=DEFAULT_METRICS_DAYS - 1)
    days = KpiRedRecoveryMetricsDaily.objects.filter(
        metric_date__gte=date_from, metric_date__lte=date_to).order_by("metric_date")
    return {
        "date_from": date_from,
        "date_to": date_to,
        "days": list(days.values()),
        "backlog": backlog_now(),
        "top_fail_reasons": fail_reasons_top(),
    }


def unlinked_activity_counts() -> dict:
    """Drivers with trips and no identity: active today and in the last 7 days."""
    return sql_rows(
        """
        SELECT count(*) FILTER (WHERE active_today) AS today, count(*) FILTER (WHERE active_last_7d) AS last_7_days
        FROM ops.v_identity_driver_unlinked_activity
        """
    )[0]


def identity_gaps() -> dict:
    """The identity-gaps summary of SPEC §6: gap counts, freshness, last run, matched in 24 h, status."""
    freshness = matching_freshness()
    gap = gap_summary()
    return {
        "total_leads": gap["total_leads"],
        "unresolved": gap["unresolved"],
        "pct_unresolved": gap["pct_unresolved"],
        "by_reason": gap["by_reason"],
        "by_reason_risk": gap["by_reason_risk"],
        "freshness": freshness["badge"],
        "last_run": freshness["last_run"],
        "last_success_at": freshness["last_success_at"],
        "matched_last_24h": sql_rows(RUNBOOK_MATCHED_LAST_24H)[0],
        "recovery": recovery_status(),
        "drivers_unlinked_activity": unlinked_activity_counts(),
    }


def financial_14d() -> QuerySet[CabinetFinancial14d]:
    return CabinetFinancial14d.objects.order_by("-lead_date", "lead_source_pk")


def leads_limbo() -> QuerySet[CabinetLeadsLimbo]:
    return CabinetLeadsLimbo.objects.order_by("-lead_date", "lead_source_pk")


def funnel_weekly() -> QuerySet[FunnelAuditWeekly]:
    return FunnelAuditWeekly.objects.order_by("-week_start")


def job_run_get(*, run_id: int) -> JobRun | None:
    return JobRun.objects.filter(pk=run_id).first()
