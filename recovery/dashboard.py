"""What the ops dashboard shows, in one read: the red KPI and its trend, the funnel, the badges, the money.

A selector: plain data out (dicts, lists, numbers, dates), no HTML. The dashboard page renders it and
the API may serve it as is.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from identity.domain import TODAY
from identity.models import REVIEW_REASONS
from identity.rules import rule_states
from recovery import reports, selectors, status
from recovery.db import sql_rows
from recovery.review.audit import audit_settings
from recovery.review.quality import ALL_MONTHS, audit_report

TREND_DAYS = 30
FUNNEL_WEEKS = 12
TOP_DRIVERS = 10
# The funnel's stages, in funnel order: (column of ops.v_cabinet_14d_funnel_audit_weekly, label).
FUNNEL_STAGES = (
    ("limbo_no_identity", "No identity"),
    ("limbo_no_driver", "No driver"),
    ("limbo_no_trips_14d", "No trips in 14 d"),
    ("limbo_trips_no_claim", "Trips, no claim"),
    ("limbo_ok", "OK"),
)


def kpi_trend(*, days: int = TREND_DAYS) -> list[dict]:
    """The last `days` Lima days of ops.v_cabinet_kpi_red_recovery_metrics_daily, oldest first."""
    return sql_rows(
        f"""
        SELECT metric_date, backlog_start, new_backlog_in, matched_out, backlog_end, net_change, top_fail_reason
        FROM ops.v_cabinet_kpi_red_recovery_metrics_daily
        WHERE metric_date > {TODAY} - %(days)s
        ORDER BY metric_date
        """,
        {"days": days},
    )


def funnel_weekly(*, weeks: int = FUNNEL_WEEKS) -> list[dict]:
    """The last `weeks` weeks (Mondays, up to this one) of ops.v_cabinet_14d_funnel_audit_weekly, oldest
    first; a week without leads is a row of zeros, so the chart's time axis has no holes."""
    stages = ", ".join(f"coalesce(f.{column}, 0) AS {column}" for column, _ in FUNNEL_STAGES)
    return sql_rows(
        f"""
        WITH week AS (
            -- the Mondays of the last `weeks` weeks, this one included
            SELECT generate_series(date_trunc('week', {TODAY}::timestamp) - (%(weeks)s - 1) * interval '1 week',
                                   date_trunc('week', {TODAY}::timestamp), interval '1 week')::date AS week_start
        )
        SELECT w.week_start, coalesce(f.leads_total, 0) AS leads_total, {stages}
        FROM week w
        -- filtered inside, so the filter reaches the view's grouping
        LEFT JOIN (
            SELECT * FROM ops.v_cabinet_14d_funnel_audit_weekly
            WHERE week_start >= date_trunc('week', {TODAY}::timestamp)::date - 7 * (%(weeks)s - 1)
        ) f ON f.week_start = w.week_start
        ORDER BY w.week_start
        """,
        {"weeks": weeks},
    )


def money_recovered() -> dict:
    """Expected, claimed and paid money (14-day window) of the leads the recovery queue matched."""
    row = sql_rows(
        """
        SELECT count(*) AS leads,
               coalesce(sum(f.expected_amount), 0) AS expected_amount,
               coalesce(sum(f.claimed_amount), 0) AS claimed_amount,
               coalesce(sum(f.paid_amount), 0) AS paid_amount
        FROM ops.cabinet_kpi_red_recovery_queue q
        JOIN ops.v_cabinet_financial_14d f ON f.lead_source_pk = q.lead_source_pk
        WHERE q.status = 'matched'
        """
    )[0]
    return {**row, **{k: Decimal(row[k]) for k in ("expected_amount", "claimed_amount", "paid_amount")}}


def unlinked_active_drivers(*, top: int = TOP_DRIVERS) -> dict:
    """Drivers with trips and no identity link: how many, how many drove today / this week, the busiest."""
    totals = sql_rows(
        """
        SELECT count(*) AS drivers,
               count(*) FILTER (WHERE active_today) AS active_today,
               count(*) FILTER (WHERE active_last_7d) AS active_last_7d,
               coalesce(sum(trips_last_7d), 0) AS trips_last_7d
        FROM ops.v_identity_driver_unlinked_activity
        """
    )[0]
    busiest = sql_rows(
        """
        SELECT driver_id, park_id, last_trip_date, trips_today, trips_last_7d, trips_total
        FROM ops.v_identity_driver_unlinked_activity
        ORDER BY trips_last_7d DESC, last_trip_date DESC, driver_id
        LIMIT %(top)s
        """,
        {"top": top},
    )
    return {**totals, "busiest": busiest}


def matched_last_24h(*, now) -> dict:
    """Leads matched in 24 h (queue and tracking rows), and the runbook's figures from the tracking table."""
    runbook = sql_rows(reports.RUNBOOK_MATCHED_LAST_24H)[0]
    return {
        "leads": status.leads_matched_since(now - timedelta(hours=24)),
        "tracked_leads": runbook["matched_last_24h"],
        "unique_persons": runbook["unique_persons_matched"],
    }


def audit_quality() -> dict:
    """Precision and missed links as the audits estimate them (recovery.review.quality.audit_report), for
    the quality chart and its warning.

    `months`: per month with audit figures, oldest first, the stratified precision of the automatic links
    with its 95 % interval, and the missed-link share (the true matches among the sampled leads just
    below the threshold) with its interval; estimated recall is 1 - that share. `overall`: the same over
    all months. `warnings`: the overall estimate and the latest month's, each when its precision's lower
    bound is under CT4_AUDIT precision_target (the partner's figure: "we cannot say it is met").
    `audited`: decided or "cannot tell" items, links and below-threshold ones; 0 means nothing to show."""
    target = audit_settings()["precision_target"]
    periods = {period["month"]: period for period in audit_report()["periods"]}
    months = [_quality_month(period) for month, period in periods.items() if month != ALL_MONTHS]
    months = [m for m in months if m["audited"] or m["below_audited"]]
    overall = _quality_month(periods[ALL_MONTHS]) if ALL_MONTHS in periods else None
    warnings = []
    latest = next((m for m in reversed(months) if m["precision_low"] is not None), None)
    for scope, figures in (("all months", overall), (latest and f"month {latest['month']}", latest)):
        if figures and figures["precision_low"] is not None and figures["precision_low"] < target:
            warnings.append({"scope": scope, **figures})
    audited = overall["audited"] + overall["below_audited"] if overall else 0
    return {"target": target, "months": months, "overall": overall, "warnings": warnings, "audited": audited}


def _quality_month(period: dict) -> dict:
    links, below = period["overall"], period["below_threshold"]
    share, low, high = below["true_match_share"], below["share_low"], below["share_high"]
    return {
        "month": period["month"], "links": links["links"], "audited": links["audited"],
        "confirmed": links["confirmed"], "rejected": links["rejected"], "precision": links["precision"],
        "precision_low": links["precision_low"], "precision_high": links["precision_high"],
        "below_audited": below["audited"], "missed_share": share, "missed_low": low, "missed_high": high,
        # recall = 1 - missed share: its interval is the share's, turned round
        "recall": None if share is None else round(1 - share, 6),
        "recall_low": None if high is None else round(1 - high, 6),
        "recall_high": None if low is None else round(1 - low, 6),
    }


def rules_demoted_read() -> list[dict]:
    """The automatic link rules an audit demoted to "review instead of link" (identity.rules), with the
    figures that demoted them: a warning until a person switches them back."""
    return [s.as_dict() for s in rule_states() if s.demoted]


def dashboard_read(*, now=None, trend_days: int = TREND_DAYS, funnel_weeks: int = FUNNEL_WEEKS) -> dict:
    """Everything the ops dashboard shows (SPEC §6), as plain data."""
    now = now or timezone.now()
    # The backlog by risk only: reports.red_kpi_now() also reads 7 days of the metrics view, which
    # the trend below reads anyway (30 days); at 1M that second read cost ~0.2 s of every cold load.
    red = selectors.backlog_now()
    fail_reasons = reports.top_fail_reasons()
    review = {reason: fail_reasons["identity_unmatched"].get(reason, 0) for reason in REVIEW_REASONS}
    return {
        "generated_at": now,
        "red_kpi": {"backlog": red["total"], "by_risk": red["by_risk"]},
        "trend": kpi_trend(days=trend_days),
        "funnel": funnel_weekly(weeks=funnel_weeks),
        "funnel_stages": FUNNEL_STAGES,
        "freshness": status.matching_freshness(now=now),
        "recovery": status.recovery_status(now=now),
        "matched_last_24h": matched_last_24h(now=now),
        "fail_reasons": fail_reasons,
        "money_recovered": money_recovered(),
        "unlinked_drivers": unlinked_active_drivers(),
        "review": {"by_reason": review, "total": sum(review.values())},
        "gap": reports.gap_summary(),
        "quality": audit_quality(),
        "demoted_rules": rules_demoted_read(),
    }
