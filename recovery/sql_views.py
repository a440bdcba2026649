"""The SQL views of SPEC §5 (backlog, gaps, unlinked drivers, 14-day money, limbo, funnel, metrics).

Each view is an unmanaged read-only model whose SQL sits beside it; migrate creates them (pgviews sync).
"""

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django_pgviews import view as pg

from identity.domain import (
    CLAIM_WINDOW_DAYS,
    EARLIEST_LEAD_SQL,
    MILESTONE_AMOUNTS,
    PARK_TIME_ZONE,
    TODAY,
    RiskLevel,
    earned_sql,
    risk_level_sql,
    window_open_sql,
)
from identity.models import LEADS_TABLE


class GapReason(models.TextChoices):
    NO_IDENTITY = "no_identity", "No identity link"
    NO_ORIGIN = "no_origin", "Linked, but the person has no origin"
    INCONSISTENT_ORIGIN = "inconsistent_origin", "The person's origin is not its earliest linked lead"
    RESOLVED = "resolved", "Resolved"


class LimboStage(models.TextChoices):
    NO_IDENTITY = "NO_IDENTITY", "No identity link"
    NO_DRIVER = "NO_DRIVER", "The person has no driver"
    NO_TRIPS_14D = "NO_TRIPS_14D", "No trips in the 14 days from the lead date"
    TRIPS_NO_CLAIM = "TRIPS_NO_CLAIM", "A reached milestone has no claim"
    OK = "OK", "All reached milestones claimed"


# The lead's own link (SPEC §2: source_pk = COALESCE(external_id::text, id::text) on both sides).
LEAD_LINK_JOIN = f"""canon.identity_links il
           ON il.source_table = '{LEADS_TABLE}' AND il.source_pk = l.source_pk"""


# --- 1. The red KPI backlog ------------------------------------------------------------

KPI_RED_BACKLOG_SQL = f"""
SELECT
    l.source_pk AS lead_source_pk,
    l.id AS lead_id,
    l.lead_date,
    l.park_id,
    l.created_at,
    {risk_level_sql("l.lead_date")} AS risk_level,
    {TODAY} - l.lead_date AS days_since_lead
FROM public.module_ct_cabinet_leads l
WHERE NOT EXISTS (
        SELECT 1 FROM canon.identity_links il
        WHERE il.source_table = '{LEADS_TABLE}' AND il.source_pk = l.source_pk)
  -- Any claim row, whatever its status, takes the lead out of the red KPI.
  AND NOT EXISTS (
        SELECT 1 FROM public.cabinet_milestone_claims c
        WHERE c.lead_source_pk = l.source_pk)
"""


class KpiRedBacklog(pg.ReadOnlyView):
    """The red KPI ("Leads sin identidad ni claims"): leads with no identity link and no claim.

    Anti-joins on identity_links (source_table, source_pk) unique and claims (lead_source_pk, milestone).
    """

    sql = KPI_RED_BACKLOG_SQL

    lead_source_pk = models.TextField(primary_key=True)
    lead_id = models.BigIntegerField()
    lead_date = models.DateField()
    park_id = models.TextField(null=True)
    created_at = models.DateTimeField()
    risk_level = models.TextField(choices=RiskLevel.choices)
    days_since_lead = models.IntegerField()

    class Meta(pg.ReadOnlyView.Meta):
        managed = False
        db_table = '"ops"."v_cabinet_kpi_red_backlog"'
        verbose_name = "red-KPI backlog lead"


# --- 2. Identity gap analysis ----------------------------------------------------------

IDENTITY_GAP_ANALYSIS_SQL = f"""
WITH lead_person AS (
    -- each lead with the person its link names (NULL when unlinked)
    SELECT l.source_pk, l.id, l.lead_date, l.park_id, l.created_at, il.person_key
    FROM public.module_ct_cabinet_leads l
    LEFT JOIN {LEAD_LINK_JOIN}
),
person_first_lead AS (
    -- each person's earliest linked lead (identity.domain.EARLIEST_LEAD_SQL): what its origin must name
    SELECT f.person_key, f.source_pk AS first_lead_source_pk
    FROM ({EARLIEST_LEAD_SQL}
    ) f
)
SELECT
    lp.source_pk AS lead_source_pk,
    lp.id AS lead_id,
    lp.lead_date,
    lp.park_id,
    lp.person_key,
    -- An origin naming a lead not linked to the person can never equal its earliest linked
    -- lead, so one comparison covers both inconsistent cases.
    CASE
        WHEN lp.person_key IS NULL THEN '{GapReason.NO_IDENTITY}'
        WHEN o.person_key IS NULL THEN '{GapReason.NO_ORIGIN}'
        WHEN o.origin_source_id IS DISTINCT FROM pf.first_lead_source_pk THEN '{GapReason.INCONSISTENT_ORIGIN}'
        ELSE '{GapReason.RESOLVED}'
    END AS gap_reason,
    {risk_level_sql("lp.lead_date")} AS risk_level,
    {TODAY} - lp.lead_date AS days_since_lead,
    o.origin_source_id,
    pf.first_lead_source_pk AS expected_origin_source_id
FROM lead_person lp
LEFT JOIN canon.identity_origin o ON o.person_key = lp.person_key
LEFT JOIN person_first_lead pf ON pf.person_key = lp.person_key
"""


class IdentityGapAnalysis(pg.ReadOnlyView):
    """One row per lead: why it is not (fully) resolved, and how urgent it is.

    `expected_origin_source_id` is the person's earliest linked lead: the origin a fix should write.
    Relies on identity_links (source_table, source_pk) unique and identity_origin's primary key.
    """

    sql = IDENTITY_GAP_ANALYSIS_SQL

    lead_source_pk = models.TextField(primary_key=True)
    lead_id = models.BigIntegerField()
    lead_date = models.DateField()
    park_id = models.TextField(null=True)
    person_key = models.UUIDField(null=True)
    gap_reason = models.TextField(choices=GapReason.choices)
    risk_level = models.TextField(choices=RiskLevel.choices)
    days_since_lead = models.IntegerField()
    origin_source_id = models.TextField(null=True)
    expected_origin_source_id = models.TextField(null=True)

    class Meta(pg.ReadOnlyView.Meta):
        managed = False
        db_table = '"ops"."v_identity_gap_analysis"'
        verbose_name = "identity gap"


# --- 3. Drivers with trips and no identity ----------------------------------------------

DRIVER_UNLINKED_ACTIVITY_SQL = f"""
WITH unlinked_driver AS (
    -- driver records that no identity link names: canon.drivers_unlinked, kept exact by triggers
    -- on public.drivers and canon.identity_links (identity migration 0006), so this view reads
    -- the few unlinked drivers instead of anti-joining a million drivers with their links
    SELECT d.driver_id, d.park_id
    FROM canon.drivers_unlinked du
    JOIN public.drivers d ON d.driver_id = du.driver_id
)
SELECT
    u.driver_id,
    u.park_id,
    t.first_trip_date,
    t.last_trip_date,
    t.trips_total,
    t.trips_today,
    t.trips_last_7d,
    t.trips_today > 0 AS active_today,
    t.trips_last_7d > 0 AS active_last_7d
FROM unlinked_driver u
-- Per driver through driver_trips (driver_id, date): cost follows the unlinked drivers, not
-- the size of the trips table.
CROSS JOIN LATERAL (
    SELECT
        min(dt.date) AS first_trip_date,
        max(dt.date) AS last_trip_date,
        sum(dt.trips) AS trips_total,
        coalesce(sum(dt.trips) FILTER (WHERE dt.date = {TODAY}), 0) AS trips_today,
        coalesce(sum(dt.trips) FILTER (WHERE dt.date > {TODAY} - 7 AND dt.date <= {TODAY}), 0) AS trips_last_7d
    FROM public.driver_trips dt
    WHERE dt.driver_id = u.driver_id AND dt.trips > 0
) t
WHERE t.trips_total > 0
"""


class DriverUnlinkedActivity(pg.ReadOnlyView):
    """Drivers (records of the drivers table) with trips and no identity link: a KPI apart from leads.

    trips_last_7d covers today and the six days before it (Lima dates). Cost follows the unlinked
    drivers (canon.drivers_unlinked, trigger-maintained), then driver_trips (driver_id, date) per driver.
    """

    sql = DRIVER_UNLINKED_ACTIVITY_SQL

    driver_id = models.TextField(primary_key=True)
    park_id = models.TextField(null=True)
    first_trip_date = models.DateField()
    last_trip_date = models.DateField()
    trips_total = models.BigIntegerField()
    trips_today = models.BigIntegerField()
    trips_last_7d = models.BigIntegerField()
    active_today = models.BooleanField()
    active_last_7d = models.BooleanField()

    class Meta(pg.ReadOnlyView.Meta):
        managed = False
        db_table = '"ops"."v_identity_driver_unlinked_activity"'
        verbose_name = "unlinked active driver"
        verbose_name_plural = "unlinked active drivers"


# --- 4. Money per lead in its 14-day window ---------------------------------------------


def _milestone_columns() -> str:
    """reached_mN, expected_amount and missing_claim_milestones, generated from settings."""
    reached = [f"lt.trips_14d >= {m} AS reached_m{m}" for m in MILESTONE_AMOUNTS]
    expected = earned_sql("lt.trips_14d")
    missing = ", ".join(
        f"CASE WHEN lt.trips_14d >= {m} AND NOT {m} = ANY(lt.claimed_milestones) THEN {m} END"
        for m in MILESTONE_AMOUNTS
    )
    return ",\n    ".join(
        [
            *reached,
            f"({expected})::numeric(12, 2) AS expected_amount",
            f"array_remove(ARRAY[{missing}]::smallint[], NULL) AS missing_claim_milestones",
        ]
    )


# Subqueries, not CTEs: a view with a WITH clause is not merged into the limbo and funnel views that
# read it, which then compute every column below (the missing milestones' array too) for every lead.
CABINET_FINANCIAL_14D_SQL = f"""
SELECT
    lt.source_pk AS lead_source_pk,
    lt.id AS lead_id,
    lt.lead_date,
    lt.park_id,
    lt.person_key,
    lt.driver_ids,
    cardinality(lt.driver_ids) AS driver_count,
    lt.lead_date + {CLAIM_WINDOW_DAYS - 1} AS window_last_date,
    {window_open_sql("lt.lead_date")} AS window_open,
    lt.trips_14d,
    {_milestone_columns()},
    lt.claimed_amount::numeric(12, 2) AS claimed_amount,
    lt.paid_amount::numeric(12, 2) AS paid_amount,
    lt.claims_count
FROM (
    -- each lead with its person, the person's drivers, their trips in the window, and its claims
    SELECT
        l.source_pk, l.id, l.lead_date, l.park_id, lw.person_key,
        coalesce(lw.driver_ids, '{{}}'::text[]) AS driver_ids,
        coalesce(lw.trips_14d, 0) AS trips_14d,
        coalesce(lc.claims_count, 0) AS claims_count,
        coalesce(lw.claimed_milestones, '{{}}'::smallint[]) AS claimed_milestones,
        coalesce(lc.claimed_amount, 0) AS claimed_amount,
        coalesce(lc.paid_amount, 0) AS paid_amount
    FROM public.module_ct_cabinet_leads l
    -- A row per linked lead, kept by triggers (recovery/lead_window.py, the home of "a person's trips
    -- in the claim window"): its link's person, that person's driver records, their trips in the
    -- window, and the milestones with a claim row. The limbo and funnel views need nothing else, so
    -- the claims aggregate below drops out of their plans (an unused LEFT JOIN on a unique key).
    LEFT JOIN ops.lead_window_14d lw ON lw.lead_source_pk = l.source_pk
    LEFT JOIN (
        -- per lead: its claim rows and their money by status
        SELECT
            c.lead_source_pk,
            count(*) AS claims_count,
            sum(c.amount) FILTER (WHERE c.status IN ('claimed', 'paid')) AS claimed_amount,
            sum(c.amount) FILTER (WHERE c.status = 'paid') AS paid_amount
        FROM public.cabinet_milestone_claims c
        GROUP BY c.lead_source_pk
    ) lc ON lc.lead_source_pk = l.source_pk
) lt
"""


class CabinetFinancial14d(pg.ReadOnlyView):
    """Per lead: trips of its person's drivers in the 14 days from lead_date, milestones, money.

    Amounts come from settings.CT4["MILESTONES"] (the SQL is generated at import). Claims count
    whatever their status; claimed_amount is claimed + paid, paid_amount is paid only.
    Person, drivers, trips and claimed milestones come from ops.lead_window_14d (trigger-kept,
    recovery/lead_window.py): one hash join instead of a probe of each lead's window.
    """

    sql = CABINET_FINANCIAL_14D_SQL

    lead_source_pk = models.TextField(primary_key=True)
    lead_id = models.BigIntegerField()
    lead_date = models.DateField()
    park_id = models.TextField(null=True)
    person_key = models.UUIDField(null=True)
    driver_ids = ArrayField(models.TextField())
    driver_count = models.IntegerField()
    window_last_date = models.DateField()
    window_open = models.BooleanField()
    trips_14d = models.BigIntegerField()
    reached_m1 = models.BooleanField()
    reached_m5 = models.BooleanField()
    reached_m25 = models.BooleanField()
    expected_amount = models.DecimalField(max_digits=12, decimal_places=2)
    missing_claim_milestones = ArrayField(models.SmallIntegerField())
    claimed_amount = models.DecimalField(max_digits=12, decimal_places=2)
    paid_amount = models.DecimalField(max_digits=12, decimal_places=2)
    claims_count = models.BigIntegerField()

    class Meta(pg.ReadOnlyView.Meta):
        managed = False
        db_table = '"ops"."v_cabinet_financial_14d"'
        verbose_name = "lead 14-day financials"
        verbose_name_plural = "leads 14-day financials"


# --- 5. Where each lead is stuck --------------------------------------------------------

CABINET_LEADS_LIMBO_SQL = f"""
SELECT
    f.lead_source_pk,
    f.lead_id,
    f.lead_date,
    f.park_id,
    f.person_key,
    -- The first stage that applies, in funnel order.
    CASE
        WHEN f.person_key IS NULL THEN '{LimboStage.NO_IDENTITY}'
        WHEN f.driver_count = 0 THEN '{LimboStage.NO_DRIVER}'
        WHEN f.trips_14d = 0 THEN '{LimboStage.NO_TRIPS_14D}'
        WHEN cardinality(f.missing_claim_milestones) > 0 THEN '{LimboStage.TRIPS_NO_CLAIM}'
        ELSE '{LimboStage.OK}'
    END AS limbo_stage,
    f.trips_14d,
    f.missing_claim_milestones
FROM ops.v_cabinet_financial_14d f
"""


class CabinetLeadsLimbo(pg.ReadOnlyView):
    """Per lead, the first funnel stage where it is stuck (OK when every reached milestone is claimed)."""

    dependencies = ["recovery.CabinetFinancial14d"]
    sql = CABINET_LEADS_LIMBO_SQL

    lead_source_pk = models.TextField(primary_key=True)
    lead_id = models.BigIntegerField()
    lead_date = models.DateField()
    park_id = models.TextField(null=True)
    person_key = models.UUIDField(null=True)
    limbo_stage = models.TextField(choices=LimboStage.choices)
    trips_14d = models.BigIntegerField()
    missing_claim_milestones = ArrayField(models.SmallIntegerField())

    class Meta(pg.ReadOnlyView.Meta):
        managed = False
        db_table = '"ops"."v_cabinet_leads_limbo"'
        verbose_name = "lead in limbo"
        verbose_name_plural = "leads in limbo"


# --- 6. Weekly funnel audit -------------------------------------------------------------

def _stage_count(stage: str) -> str:
    return f"coalesce(sum(ws.leads) FILTER (WHERE ws.limbo_stage = '{stage}'), 0)::bigint"


FUNNEL_AUDIT_WEEKLY_SQL = f"""
WITH week_stage AS (
    -- leads per week and limbo stage: each lead's stage is computed once, where five FILTERs over
    -- the limbo view would evaluate its CASE five times per lead
    SELECT
        -- ::timestamp (not timestamptz) so the Monday does not depend on the session time zone.
        date_trunc('week', lb.lead_date::timestamp)::date AS week_start,
        lb.limbo_stage,
        count(*) AS leads
    FROM ops.v_cabinet_leads_limbo lb
    GROUP BY 1, 2
)
SELECT
    ws.week_start,
    sum(ws.leads)::bigint AS leads_total,
    {_stage_count(LimboStage.NO_IDENTITY)} AS limbo_no_identity,
    {_stage_count(LimboStage.NO_DRIVER)} AS limbo_no_driver,
    {_stage_count(LimboStage.NO_TRIPS_14D)} AS limbo_no_trips_14d,
    {_stage_count(LimboStage.TRIPS_NO_CLAIM)} AS limbo_trips_no_claim,
    {_stage_count(LimboStage.OK)} AS limbo_ok
FROM week_stage ws
GROUP BY ws.week_start
"""


class FunnelAuditWeekly(pg.ReadOnlyView):
    """Leads per week (Monday of lead_date) by limbo stage; the stage columns sum to leads_total."""

    dependencies = ["recovery.CabinetLeadsLimbo"]
    sql = FUNNEL_AUDIT_WEEKLY_SQL

    week_start = models.DateField(primary_key=True)
    leads_total = models.BigIntegerField()
    limbo_no_identity = models.BigIntegerField()
    limbo_no_driver = models.BigIntegerField()
    limbo_no_trips_14d = models.BigIntegerField()
    limbo_trips_no_claim = models.BigIntegerField()
    limbo_ok = models.BigIntegerField()

    class Meta(pg.ReadOnlyView.Meta):
        managed = False
        db_table = '"ops"."v_cabinet_14d_funnel_audit_weekly"'
        verbose_name = "weekly funnel audit"
        verbose_name_plural = "weekly funnel audit"


# --- 7. Red-KPI recovery metrics per day -------------------------------------------------

KPI_RED_RECOVERY_METRICS_DAILY_SQL = f"""
WITH first_claim AS (
    -- each claimed lead's first claim: from then on it is out of the red backlog for good
    SELECT c.lead_source_pk, min(c.created_at) AS first_claim_at
    FROM public.cabinet_milestone_claims c
    GROUP BY c.lead_source_pk
),
undone_link AS (
    -- lead links a person undid (identity.linking.lead_unlink): when each was made and when undone
    SELECT h.id, h.source_pk, h.linked_at, h.undone_at
    FROM canon.identity_link_history h
    WHERE h.source_table = '{LEADS_TABLE}'
),
lead_out AS (
    -- each lead's first stay: from its creation to its first link ever (undone since or not) or its first
    -- claim, whichever came first
    SELECT
        l.lead_date,
        l.lead_date AS entered_on,
        l.created_at AS start_at,
        LEAST(il.linked_at, ul.first_linked_at, fc.first_claim_at) AS out_at
    FROM public.module_ct_cabinet_leads l
    LEFT JOIN {LEAD_LINK_JOIN}
    LEFT JOIN (
        SELECT u.source_pk, min(u.linked_at) AS first_linked_at FROM undone_link u GROUP BY u.source_pk
    ) ul ON ul.source_pk = l.source_pk
    LEFT JOIN first_claim fc ON fc.lead_source_pk = l.source_pk
    UNION ALL
    -- each stay after an undo: from the undo to the lead's next link (the next undone one, in the order they
    -- were undone, else its link now) or its first claim, whichever came first
    SELECT
        l.lead_date,
        GREATEST((u.undone_at AT TIME ZONE '{PARK_TIME_ZONE}')::date, l.lead_date),
        u.undone_at,
        LEAST(
            coalesce((SELECT n.linked_at FROM undone_link n
                      WHERE n.source_pk = u.source_pk AND n.id > u.id ORDER BY n.id LIMIT 1),
                     il.linked_at),
            fc.first_claim_at)
    FROM undone_link u
    JOIN public.module_ct_cabinet_leads l ON l.source_pk = u.source_pk
    LEFT JOIN canon.identity_links il ON il.source_table = '{LEADS_TABLE}' AND il.source_pk = u.source_pk
    LEFT JOIN first_claim fc ON fc.lead_source_pk = u.source_pk
),
backlog_stay AS (
    -- the stays that happened: the day each began and the day it ended (NULL: still in)
    SELECT
        LEAST(lo.entered_on, {TODAY}) AS in_day,
        CASE WHEN lo.out_at IS NOT NULL THEN
            LEAST(GREATEST((lo.out_at AT TIME ZONE '{PARK_TIME_ZONE}')::date, lo.lead_date), {TODAY})
        END AS out_day
    FROM lead_out lo
    WHERE lo.out_at IS NULL OR lo.out_at > lo.start_at
),
day_flow AS (
    -- per day: leads entering and leaving the backlog, counted in one pass over the stays (GROUPING SETS:
    -- by the day each began, and by the day each ended). Every CTE above is read once, so PostgreSQL
    -- inlines them instead of writing each lead's stay aside and reading it twice.
    SELECT
        CASE WHEN c.by_out = 0 THEN c.in_day ELSE c.out_day END AS metric_date,
        coalesce(sum(c.stays) FILTER (WHERE c.by_out = 0), 0) AS n_in,
        coalesce(sum(c.stays) FILTER (WHERE c.by_out = 1), 0) AS n_out
    FROM (
        SELECT in_day, out_day, GROUPING(in_day) AS by_out, count(*) AS stays
        FROM backlog_stay
        GROUP BY GROUPING SETS ((in_day), (out_day))
    ) c
    WHERE c.by_out = 0 OR c.out_day IS NOT NULL
    GROUP BY 1
),
calendar AS (
    -- every day from the first lead's day to today, so quiet days still get a row (every stay's lead_date
    -- is a lead's, so the leads' earliest is the stays' earliest; read from cabinet_lead_date_idx)
    SELECT gs::date AS metric_date
    FROM generate_series(
        (SELECT LEAST(min(lead_date), {TODAY}) FROM public.module_ct_cabinet_leads)::timestamp,
        {TODAY}::timestamp, interval '1 day'
    ) gs
),
daily AS (
    -- flows per calendar day and the backlog at its end (running sum of in - out)
    SELECT
        c.metric_date,
        coalesce(f.n_in, 0)::bigint AS new_backlog_in,
        coalesce(f.n_out, 0)::bigint AS matched_out,
        (sum(coalesce(f.n_in, 0) - coalesce(f.n_out, 0)) OVER (ORDER BY c.metric_date))::bigint AS backlog_end
    FROM calendar c
    LEFT JOIN day_flow f ON f.metric_date = c.metric_date
),
fail_reason_rank AS (
    -- per Lima day: failed queue rows by reason, most frequent first (ties by name)
    SELECT
        (q.last_attempt_at AT TIME ZONE '{PARK_TIME_ZONE}')::date AS metric_date,
        q.fail_reason,
        row_number() OVER (
            PARTITION BY (q.last_attempt_at AT TIME ZONE '{PARK_TIME_ZONE}')::date
            ORDER BY count(*) DESC, q.fail_reason
        ) AS rank
    FROM ops.cabinet_kpi_red_recovery_queue q
    WHERE q.status = 'failed' AND q.fail_reason IS NOT NULL AND q.last_attempt_at IS NOT NULL
    GROUP BY 1, 2
)
SELECT
    d.metric_date,
    d.backlog_end - d.new_backlog_in + d.matched_out AS backlog_start,
    d.new_backlog_in,
    d.matched_out,
    d.backlog_end,
    d.new_backlog_in - d.matched_out AS net_change,
    fr.fail_reason AS top_fail_reason
FROM daily d
LEFT JOIN fail_reason_rank fr ON fr.metric_date = d.metric_date AND fr.rank = 1
"""


class KpiRedRecoveryMetricsDaily(pg.ReadOnlyView):
    """Per Lima day from the first lead to today: the red backlog's start, inflow, drain and end.

    There is no event table: the history is derived from timestamps that already exist. A lead stays in
    the backlog from its created_at until the earliest of its first link (one a person undid since
    included) and its first claim; a stay happened iff it ends later than it began, or has not ended
    (a lead that arrived already linked or claimed never entered). Each link a person undid
    (canon.identity_link_history) starts a new stay at its undone_at, ending at the lead's next link (the
    next one undone, in the order of the undos, else its link now) or its first claim (no stay when the
    lead was claimed before the undo). The first stay enters on the lead's
    lead_date (as before undos existed), a stay after an undo on the Lima date of the undo, and a stay
    leaves on the Lima date it ended, all clamped to [lead_date, today]; so new_backlog_in(d)
    counts entries (a lead whose link was undone on d enters again on d), matched_out(d) counts exits,
    backlog_end(d) is the running sum of in - out, and backlog_start(d) = backlog_end(d - 1) (0 on the
    first day). Hence backlog_end = backlog_start + new_backlog_in - matched_out on every row, and
    today's backlog_end counts exactly the leads with no link and no claim, i.e. the backlog view. An
    undo leaves the days before it as they were reported. A link removed by hand (not through
    lead_unlink, so without a history row) removes its exit too: the lead counts as in the backlog since
    it entered, on every day. top_fail_reason(d) is the most common fail_reason of failed queue rows last
    attempted on d. Relies on identity_links (source_table, source_pk), the history's (source_table,
    source_pk) index, claims (lead_source_pk, milestone) and the queue's (status, next_attempt_at) index.
    """

    sql = KPI_RED_RECOVERY_METRICS_DAILY_SQL

    metric_date = models.DateField(primary_key=True)
    backlog_start = models.BigIntegerField()
    new_backlog_in = models.BigIntegerField()
    matched_out = models.BigIntegerField()
    backlog_end = models.BigIntegerField()
    net_change = models.BigIntegerField()
    top_fail_reason = models.TextField(null=True)

    class Meta(pg.ReadOnlyView.Meta):
        managed = False
        db_table = '"ops"."v_cabinet_kpi_red_recovery_metrics_daily"'
        verbose_name = "red-KPI recovery day"
