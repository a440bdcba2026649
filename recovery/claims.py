"""The writer of expected claims: milestones (1, 5, 25 trips) reached within 14 days of the lead date.

Imported claims (claimed / paid / rejected) come through identity.importing, which upserts by
(lead_source_pk, milestone); here we only fill the milestones that have no row at all, so an
imported status is never duplicated nor downgraded.
"""

from __future__ import annotations

from django.db import connection

from identity.domain import MILESTONE_AMOUNTS
from identity.models import LEADS_TABLE, ClaimStatus

CREATED_BY = "reconcile"

# Per lead: its person's drivers with their trips in the claim window (ops.person_window_trips, the
# definition recovery.lead_window installs); the lead's total decides the milestones (it equals
# ops.lead_window_14d.trips_14d, as in v_cabinet_financial_14d), the busiest driver is named.
_CREATE_EXPECTED_SQL = """
WITH lead_driver AS (
    SELECT l.source_pk, w.driver_id, w.trips
    FROM public.module_ct_cabinet_leads l
    JOIN canon.identity_links il ON il.source_table = %(leads)s AND il.source_pk = l.source_pk
    CROSS JOIN LATERAL ops.person_window_trips(il.person_key, l.lead_date) w
    WHERE %(all)s OR l.source_pk = ANY(%(source_pks)s::text[])
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

    Amount from settings.CT4["MILESTONES"] (identity.domain.MILESTONE_AMOUNTS); driver_id is the person's
    driver with the most trips in the window. A milestone that already has a row, whatever its status, is left alone.
    """
    if source_pks is not None and not source_pks:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            _CREATE_EXPECTED_SQL,
            {
                "leads": LEADS_TABLE,
                "all": source_pks is None,
                "source_pks": source_pks or [],
                "status": ClaimStatus.EXPECTED.value,
                "created_by": CREATED_BY,
                "milestones": list(MILESTONE_AMOUNTS),
                "amounts": [str(a) for a in MILESTONE_AMOUNTS.values()],
            },
        )
        return cursor.rowcount

