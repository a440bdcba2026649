"""The review list: the doubtful leads waiting for a reviewer, most urgent first (one query)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.db import connection

from identity.domain import earned_sql, milestone_total, risk_level_sql, window_open_sql
from identity.models import LEADS_TABLE, REVIEW_REASONS, Verdict
from recovery.db import sql_rows
from recovery.review.money import at_stake_sql
from recovery.review.rules import DEFER_HOURS, STORED_PLAUSIBLE_SQL, plausible_params


@dataclass(frozen=True)
class ReviewRow:
    source_pk: str
    reason_code: str
    lead_date: date
    park_id: str | None
    name: str
    risk_level: str
    window_open: bool
    candidates: int
    best_score: float | None
    earned: Decimal
    at_stake: Decimal
    deferred_until: datetime | None
    deferred_by: str | None
    snapshot_date: date
    # The link rule this lead would have linked by, had an audit not demoted it (identity.rules).
    demoted_rule: str | None = None


@dataclass
class ReviewPage:
    rows: list[ReviewRow]
    total: int


def _review_sql(where: str, order_and_limit: str) -> str:
    return f"""
WITH review AS (
    -- open conflict / weak-match leads that nobody has linked
    SELECT u.source_pk, u.reason_code, u.details, u.snapshot_date, u.details->>'demoted_rule' AS demoted_rule,
           l.lead_date, l.park_id, concat_ws(' ', l.first_name, l.middle_name, l.last_name) AS name
    FROM canon.identity_unmatched u
    JOIN public.module_ct_cabinet_leads l ON l.source_pk = u.source_pk
    WHERE u.source_table = %(leads)s AND u.status = 'open' AND u.reason_code = ANY(%(reasons)s)
      AND NOT EXISTS (SELECT 1 FROM canon.identity_links il
                      WHERE il.source_table = %(leads)s AND il.source_pk = u.source_pk)
),
candidate AS (
    -- each lead's plausible candidates (score above the weak threshold, or a key agreeing) not rejected
    SELECT r.source_pk, (c->>'person_key')::uuid AS person_key, (c->>'score')::float8 AS score
    FROM review r
    CROSS JOIN LATERAL jsonb_array_elements(coalesce(r.details->'candidates', '[]'::jsonb)) c
    WHERE NOT coalesce((c->>'excluded_by_judgement')::boolean, false)
      AND {STORED_PLAUSIBLE_SQL}
      AND NOT EXISTS (SELECT 1 FROM canon.identity_judgements j
                      WHERE j.source_table = %(leads)s AND j.source_pk = r.source_pk
                        AND j.person_key = (c->>'person_key')::uuid AND j.verdict = %(rejected)s)
),
candidate_trips AS (
    -- trips of each candidate's driver records in the lead's claim window (ops.person_window_trips,
    -- the one definition, installed by recovery.lead_window)
    SELECT c.source_pk, c.person_key, c.score, coalesce(sum(w.trips), 0)::bigint AS trips
    FROM candidate c
    JOIN review r ON r.source_pk = c.source_pk
    LEFT JOIN LATERAL ops.person_window_trips(c.person_key, r.lead_date) w ON true
    GROUP BY c.source_pk, c.person_key, c.score
),
per_lead AS (
    -- per lead: live candidates, the best score, the most any candidate has already earned
    SELECT ct.source_pk, count(*) AS candidates, max(ct.score) AS best_score,
           max({earned_sql("ct.trips")})::numeric(12, 2) AS earned
    FROM candidate_trips ct
    GROUP BY ct.source_pk
),
last_judgement AS (
    -- each lead's latest judgement: a recent deferral pushes the lead down the list
    SELECT DISTINCT ON (j.source_pk) j.source_pk, j.verdict, j.decided_at, j.decided_by_name
    FROM canon.identity_judgements j
    WHERE j.source_table = %(leads)s AND j.source_pk IN (SELECT source_pk FROM per_lead)
    ORDER BY j.source_pk, j.decided_at DESC, j.id DESC
),
listed AS (
    SELECT r.source_pk, r.reason_code, r.lead_date, r.park_id, r.name,
           {risk_level_sql("r.lead_date")} AS risk_level,
           {window_open_sql("r.lead_date")} AS window_open,
           p.candidates, p.best_score, p.earned,
           -- open window: the whole milestone schedule can still be earned; closed: what was earned
           {at_stake_sql(lead_date="r.lead_date", earned="p.earned")} AS at_stake,
           CASE WHEN lj.verdict = %(defer)s AND lj.decided_at > now() - interval '{DEFER_HOURS} hours'
                THEN lj.decided_at + interval '{DEFER_HOURS} hours' END AS deferred_until,
           CASE WHEN lj.verdict = %(defer)s THEN lj.decided_by_name END AS deferred_by,
           r.snapshot_date, r.demoted_rule
    FROM review r
    JOIN per_lead p ON p.source_pk = r.source_pk
    LEFT JOIN last_judgement lj ON lj.source_pk = r.source_pk
)
SELECT listed.*, count(*) OVER () AS total
FROM listed
WHERE true {where}
{order_and_limit}
"""


REVIEW_ORDER = """
ORDER BY (deferred_until IS NOT NULL),
         CASE risk_level WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END,
         at_stake DESC, earned DESC, lead_date, source_pk
"""


def _params(**extra) -> dict:
    return {
        "leads": LEADS_TABLE,
        "reasons": list(REVIEW_REASONS),
        **plausible_params(),
        "rejected": Verdict.NOT_THIS_PERSON.value,
        "defer": Verdict.DEFER.value,
        "total": milestone_total(),
        **extra,
    }


def review_queue(
    *, reason: str | None = None, risk: str | None = None, park: str | None = None,
    limit: int = 50, offset: int = 0, source_pks: list[str] | None = None,
) -> ReviewPage:
    """The leads waiting for a reviewer, most urgent first.

    Order: leads not deferred in the last DEFER_HOURS first; then risk (high: the 14-day window
    is open); then money at stake, then money already earned by a candidate, then the lead
    whose window closes first. Money at stake is the whole milestone schedule while the window
    is open (all of it can still be earned once the lead is linked) and, once it closed, what
    the lead's best candidate already earned in the window (the milestones its trips reached).
    """
    conditions, params = [], _params(limit=limit, offset=offset)
    if reason:
        conditions.append("reason_code = %(reason)s")
        params["reason"] = reason
    if risk:
        conditions.append("risk_level = %(risk)s")
        params["risk"] = risk
    if park:
        conditions.append("park_id = %(park)s")
        params["park"] = park
    if source_pks is not None:
        conditions.append("source_pk = ANY(%(source_pks)s)")
        params["source_pks"] = source_pks
    where = "".join(f" AND {c}" for c in conditions)
    sql = _review_sql(where, REVIEW_ORDER + " LIMIT %(limit)s OFFSET %(offset)s")
    rows = sql_rows(sql, params)
    total = rows[0]["total"] if rows else (0 if offset == 0 else review_count(reason=reason, risk=risk, park=park))
    return ReviewPage(
        rows=[ReviewRow(**{k: v for k, v in row.items() if k != "total"}) for row in rows], total=total
    )


def review_count(*, reason: str | None = None, risk: str | None = None, park: str | None = None) -> int:
    return review_queue(reason=reason, risk=risk, park=park, limit=1).total


def review_parks() -> list[str]:
    """Parks of the leads waiting for review (for the list's filter)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT l.park_id FROM canon.identity_unmatched u
            JOIN public.module_ct_cabinet_leads l ON l.source_pk = u.source_pk
            WHERE u.source_table = %s AND u.status = 'open' AND u.reason_code = ANY(%s) AND l.park_id IS NOT NULL
            ORDER BY 1
            """,
            [LEADS_TABLE, list(REVIEW_REASONS)],
        )
        return [row[0] for row in cursor.fetchall()]


