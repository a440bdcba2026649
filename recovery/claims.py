"""The writer of expected claims: milestones (1, 5, 25 trips) reached within 14 days of the lead date.

Imported claims (claimed / paid / rejected) come through identity.importing, which upserts by
(lead_source_pk, milestone); here we only fill the milestones that have no row at all, so an
imported status is never duplicated nor downgraded.
"""

from __future__ import annotations

from django.db import connection

from identity.models import DRIVERS_TABLE, LEADS_TABLE, ClaimStatus
from recovery.views import CLAIM_WINDOW_DAYS, MILESTONE_AMOUNTS

CREATED_BY = "reconcile"

# Per lead: its person's drivers with their trips in [lead_date, lead_date + 14); the lead's
# total decides the milestones (as in v_cabinet_financial_14d), the busiest driver is named.
_CREATE_EXPECTED_SQL = f"""
WITH lead_driver AS (
    SELECT l.source_pk, dl.source_pk AS driver_id, coalesce(sum(dt.trips), 0) AS trips
    FROM public.module_ct_cabinet_leads l
    JOIN canon.identity_links il ON il.source_table = %(leads)s AND il.source_pk = l.source_pk
    JOIN canon.identity_links dl ON dl.person_key = il.person_key AND dl.source_table = %(drivers)s
    LEFT JOIN public.driver_trips dt
           ON dt.driver_id = dl.source_pk
          AND dt.date >= l.lead_date AND dt.date < l.lead_date + {CLAIM_WINDOW_DAYS}
    WHERE %(all)s OR l.source_pk = ANY(%(source_pks)s::text[])
    GROUP BY l.source_pk, dl.source_pk
), lead_total AS (
    SELECT source_pk, sum(trips) AS trips_14d,
           (array_agg(driver_id ORDER BY trips DESC, driver_id))[1] AS driver_id
    FROM lead_driver
    GROUP BY source_pk
)
INSERT INTO public.cabinet_milestone_claims AS c
    (lead_source_pk, driver_id, milestone, amount, status, claimed_at, created_by, created_at, updated_at)
SELECT t.source_pk, t.driver_id, m.milestone, m.amount, %(status)s, NULL, %(created_by)s, now(), now()
FROM lead_total t
JOIN unnest(%(milestones)s::smallint[], %(amounts)s::numeric[]) AS m(milestone, amount)
  ON t.trips_14d >= m.milestone
WHERE NOT EXISTS (SELECT 1 FROM public.cabinet_milestone_claims e
                  WHERE e.lead_source_pk = t.source_pk AND e.milestone = m.milestone)
ORDER BY t.source_pk, m.milestone
ON CONFLICT (lead_source_pk, milestone) DO NOTHING
"""


def claims_create_expected(*, source_pks: list[str] | None = None) -> int:
    """Insert the missing 'expected' claims of these leads (every lead when None); returns rows inserted.

    Amount from settings.CT4["MILESTONES"] (recovery.views.MILESTONE_AMOUNTS); driver_id is the person's driver with the most trips
    in the window. A milestone that already has a row, whatever its status, is left alone.
    """
    if source_pks is not None and not source_pks:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            _CREATE_EXPECTED_SQL,
            {
                "leads": LEADS_TABLE,
                "drivers": DRIVERS_TABLE,
                "all": source_pks is None,
                "source_pks": source_pks or [],
                "status": ClaimStatus.EXPECTED.value,
                "created_by": CREATED_BY,
                "milestones": list(MILESTONE_AMOUNTS),
                "amounts": [str(a) for a in MILESTONE_AMOUNTS.values()],
            },
        )
        return cursor.rowcount

