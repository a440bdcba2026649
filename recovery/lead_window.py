"""ops.lead_window_14d: what each linked lead's 14-day claim window holds, kept exact by triggers.

One row per linked lead: its link's person, that person's driver records, their trips in the lead's
claim window, and the milestones the lead already has a claim row for. The 14-day money view, and the
limbo and weekly funnel views on it, read this table instead of probing every lead's window and
aggregating every claim on every query (the funnel took 455-645 ms at a million drivers).

This module is the one home of "a person's trips in the claim window". It defines, in SQL that
`migrate` installs (and installs again whenever this code changes it):

- `ops.in_claim_window(trip_date, lead_date)`: the claim window, the CLAIM_WINDOW_DAYS days from lead_date;
- `ops.person_window_trips(person_key, lead_date)`: each driver record of a person with its trips in that
  window. The reconcile job (recovery.claims) and the review screen (recovery.review.screen) call it too;
- DIRECT_SQL, the table's rows computed from the sources; triggers keep the table equal to it.

The rows depend on four tables. Statement-level triggers with transition tables recompute, once per
statement, the leads a write touches (importing a million trips costs one set-based statement):

- public.driver_trips: the leads whose person has the driver and whose window holds the day;
- canon.identity_links: a lead link's own lead; a driver link's person's leads (insert, delete, and an
  UPDATE that moves a link to another person or source record);
- public.module_ct_cabinet_leads: new leads that already have a link, deleted leads, and leads whose
  lead_date or source_pk changed;
- public.cabinet_milestone_claims: the leads of claims added, removed or moved to another lead or milestone.
TRUNCATE of trips or claims clears those figures; TRUNCATE of links or leads empties the table. An
UPDATE's old and new rows are paired on id: an UPDATE of id itself (never done by the product) is not
followed, and the guardrail would show it.

Recomputing (not adding deltas) keeps the rows equal to DIRECT_SQL whatever the write. Two concurrent
writers could each miss the other's uncommitted rows (a trips import and a new link of the same person),
so every trigger takes one transaction-level advisory lock before it reads: writers of those tables wait
for each other from their trigger to their commit, and the second then reads the first's committed rows
(READ COMMITTED: each statement in the trigger takes a new snapshot). The guardrail
check_identity_links_origins compares the table with DIRECT_SQL (DIFFERENCES_SQL).
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from identity.domain import CLAIM_WINDOW_DAYS
from identity.models import DRIVERS_TABLE, LEADS_TABLE

TABLE = "ops.lead_window_14d"
LOCK = "ct4.lead_window_14d"
COLUMNS = "lead_source_pk, person_key, driver_ids, trips_14d, claimed_milestones"

# The table's rows computed from the sources: every lead with a link (filter it with a WHERE on l).
DIRECT_SQL = f"""
SELECT l.source_pk AS lead_source_pk, il.person_key,
       coalesce(w.driver_ids, '{{}}'::text[]) AS driver_ids, coalesce(w.trips_14d, 0)::bigint AS trips_14d,
       coalesce(c.milestones, '{{}}'::smallint[]) AS claimed_milestones
FROM public.module_ct_cabinet_leads l
JOIN canon.identity_links il ON il.source_table = '{LEADS_TABLE}' AND il.source_pk = l.source_pk
CROSS JOIN LATERAL (
    -- the person's driver records and their trips in the window
    SELECT array_agg(p.driver_id ORDER BY p.driver_id) AS driver_ids, sum(p.trips) AS trips_14d
    FROM ops.person_window_trips(il.person_key, l.lead_date) p
) w
CROSS JOIN LATERAL (
    -- the milestones with a claim row, whatever its status
    SELECT array_agg(cm.milestone ORDER BY cm.milestone) AS milestones
    FROM public.cabinet_milestone_claims cm
    WHERE cm.lead_source_pk = l.source_pk
) c
"""

# Rows of the table that differ from DIRECT_SQL: (category, lead_source_pk, display); display names the
# lead and both figures only (never personal data). The guardrail reads it.
_FIGURE = ("{t}.trips_14d || ' trips over ' || cardinality({t}.driver_ids) || ' drivers, claimed ' "
           "|| {t}.claimed_milestones::text")
DIFFERENCES_SQL = f"""
SELECT CASE WHEN k.lead_source_pk IS NULL THEN 'lead_window_missing'
            WHEN d.lead_source_pk IS NULL THEN 'lead_window_stray'
            ELSE 'lead_window_wrong' END AS category,
       coalesce(d.lead_source_pk, k.lead_source_pk) AS lead_source_pk,
       coalesce(d.lead_source_pk, k.lead_source_pk)
       || ' (kept: ' || coalesce({_FIGURE.format(t="k")}, 'none')
       || '; direct: ' || coalesce({_FIGURE.format(t="d")}, 'none') || ')' AS display
FROM ({DIRECT_SQL}) d
FULL JOIN {TABLE} k ON k.lead_source_pk = d.lead_source_pk
WHERE (d.person_key, d.driver_ids, d.trips_14d, d.claimed_milestones)
      IS DISTINCT FROM (k.person_key, k.driver_ids, k.trips_14d, k.claimed_milestones)
"""


def _trigger(changed: dict[str, str], affected: str) -> str:
    """A statement trigger's body: `changed[TG_OP]` selects the rows the statement changed (from its
    transition tables), `affected` the source_pks of the leads to recompute from them (alias c).
    Dynamic SQL so each statement is planned for its own row count, not the first call's."""
    cases = "\n".join(f"        WHEN '{op}' THEN '{sql}'" for op, sql in changed.items())
    return f"""
DECLARE
    changed text;
    any_change boolean;
    pks text[];
BEGIN
    changed := CASE TG_OP
{cases}
    END;
    EXECUTE 'SELECT EXISTS (' || changed || ')' INTO any_change;
    IF NOT any_change THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('{LOCK}'));
    EXECUTE 'WITH c AS (' || changed || ') SELECT ARRAY({affected.replace("'", "''")})' INTO pks;
    PERFORM ops.lead_window_14d_refresh(pks);
    RETURN NULL;
END
"""


def _moved(columns: str) -> str:
    """An UPDATE's rows whose `columns` changed, old and new values both (joined on id)."""
    old = ", ".join(f"o.{c}" for c in columns.split(", "))
    new = ", ".join(f"n.{c}" for c in columns.split(", "))
    return (f"SELECT x.* FROM old_rows o JOIN new_rows n ON n.id = o.id "
            f"CROSS JOIN LATERAL (VALUES ({old}), ({new})) x({columns}) "
            f"WHERE ({old}) IS DISTINCT FROM ({new})")


_HAS_ROW_OR_LINK = f"""
    EXISTS (SELECT 1 FROM canon.identity_links il WHERE il.source_table = '{LEADS_TABLE}' AND il.source_pk = c.source_pk)
    OR EXISTS (SELECT 1 FROM {TABLE} s WHERE s.lead_source_pk = c.source_pk)"""  # noqa: E501 - installed SQL, kept as it is

# (name, arguments, declaration, body): CREATE OR REPLACE FUNCTION ops.<name>(<arguments>) <declaration> AS $$<body>$$
FUNCTIONS: list[tuple[str, str, str, str]] = [
    (
        # A single expression: inlined by the planner, so comparisons on dt.date still use the index.
        "in_claim_window", "trip_date date, lead_date date",
        "RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE",
        f"SELECT trip_date >= lead_date AND trip_date < lead_date + {CLAIM_WINDOW_DAYS}",
    ),
    (
        # A single SELECT, STABLE and not STRICT: inlined into the caller's query like a subquery.
        "person_window_trips", "for_person uuid, lead_date date",
        "RETURNS TABLE (driver_id text, trips bigint) LANGUAGE sql STABLE PARALLEL SAFE",
        f"""
    SELECT dl.source_pk, w.trips
    FROM canon.identity_links dl
    -- per driver record through driver_trips (driver_id, date) INCLUDE (trips): index-only
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(dt.trips), 0)::bigint AS trips
        FROM public.driver_trips dt
        WHERE dt.driver_id = dl.source_pk AND ops.in_claim_window(dt.date, lead_date)
    ) w
    WHERE dl.person_key = for_person AND dl.source_table = '{DRIVERS_TABLE}'
""",
    ),
    (
        "lead_window_14d_refresh", "lead_pks text[]", "RETURNS void LANGUAGE sql",
        f"""
    -- leads gone, or without a link any more
    DELETE FROM {TABLE} s
    WHERE s.lead_source_pk = ANY(lead_pks)
      AND NOT EXISTS (SELECT 1 FROM public.module_ct_cabinet_leads l
                      JOIN canon.identity_links il ON il.source_table = '{LEADS_TABLE}' AND il.source_pk = l.source_pk
                      WHERE l.source_pk = s.lead_source_pk);
    -- the others recomputed; a row is rewritten only when a value changed. Driven lead by lead from
    -- the array (LATERAL, and OFFSET 0 so the subquery is not flattened): the links table's statistics
    -- are stale while a run writes its links (they said "no lead link" at the start of a match run,
    -- and a plan scanning every lead link per call grew with the square of the run).
    INSERT INTO {TABLE} AS s ({COLUMNS})
    SELECT x.* FROM (SELECT DISTINCT unnest(lead_pks) AS pk) k
    CROSS JOIN LATERAL ({DIRECT_SQL}
        WHERE l.source_pk = k.pk OFFSET 0) x
    ORDER BY 1
    ON CONFLICT (lead_source_pk) DO UPDATE
        SET person_key = EXCLUDED.person_key, driver_ids = EXCLUDED.driver_ids, trips_14d = EXCLUDED.trips_14d,
            claimed_milestones = EXCLUDED.claimed_milestones
        WHERE (s.person_key, s.driver_ids, s.trips_14d, s.claimed_milestones)
              IS DISTINCT FROM (EXCLUDED.person_key, EXCLUDED.driver_ids, EXCLUDED.trips_14d, EXCLUDED.claimed_milestones);
""",  # noqa: E501 - installed SQL, kept as it is
    ),
    (
        "lead_window_14d_rebuild", "", "RETURNS void LANGUAGE sql",
        f"""
    SELECT pg_advisory_xact_lock(hashtext('{LOCK}'));
    TRUNCATE {TABLE};
    INSERT INTO {TABLE} ({COLUMNS})
    {DIRECT_SQL}
    ORDER BY 1;
    ANALYZE {TABLE};
""",
    ),
    (
        # public.driver_trips: the (driver_id, date) pairs written -> their persons' leads whose window holds the day
        "lead_window_14d_on_trips", "", "RETURNS trigger LANGUAGE plpgsql",
        _trigger(
            {"INSERT": "SELECT driver_id, date FROM new_rows",
             "DELETE": "SELECT driver_id, date FROM old_rows",
             "UPDATE": _moved("driver_id, date, trips")},
            f"""
        SELECT DISTINCT ll.source_pk
        FROM c
        JOIN canon.identity_links dl ON dl.source_table = '{DRIVERS_TABLE}' AND dl.source_pk = c.driver_id
        JOIN canon.identity_links ll ON ll.source_table || '' = '{LEADS_TABLE}' AND ll.person_key = dl.person_key
        JOIN public.module_ct_cabinet_leads l ON l.source_pk = ll.source_pk
        WHERE ops.in_claim_window(c.date, l.lead_date)""",
        ),
    ),
    (
        # canon.identity_links: a lead link's own lead; a driver link's person's leads. `source_table || ''`
        # (here and for trips) keeps the planner on the person index: a match run's start statistics (no
        # lead link yet) made the (source_table, source_pk) index look cheap, and it scanned every lead
        # link written so far at each batch, with no driver link in it (37 ms a batch at 70,000 links).
        # A first build's million driver links copy with this trigger disabled (identity.linking.drivers_first_write).
        "lead_window_14d_on_links", "", "RETURNS trigger LANGUAGE plpgsql",
        _trigger(
            {"INSERT": "SELECT source_table, source_pk, person_key FROM new_rows",
             "DELETE": "SELECT source_table, source_pk, person_key FROM old_rows",
             "UPDATE": _moved("source_table, source_pk, person_key")},
            f"""
        SELECT c.source_pk FROM c WHERE c.source_table = '{LEADS_TABLE}'
        UNION
        SELECT ll.source_pk
        FROM (SELECT DISTINCT c.person_key FROM c WHERE c.source_table = '{DRIVERS_TABLE}') p
        JOIN canon.identity_links ll ON ll.source_table || '' = '{LEADS_TABLE}' AND ll.person_key = p.person_key""",
        ),
    ),
    (
        # public.module_ct_cabinet_leads: the leads themselves, when they have a link or a row
        "lead_window_14d_on_leads", "", "RETURNS trigger LANGUAGE plpgsql",
        _trigger(
            {"INSERT": "SELECT source_pk FROM new_rows",
             "DELETE": "SELECT source_pk FROM old_rows",
             "UPDATE": _moved("source_pk, lead_date")},
            f"SELECT DISTINCT c.source_pk FROM c WHERE {_HAS_ROW_OR_LINK}",
        ),
    ),
    (
        # public.cabinet_milestone_claims: the claims' leads, when they have a link or a row
        "lead_window_14d_on_claims", "", "RETURNS trigger LANGUAGE plpgsql",
        _trigger(
            {"INSERT": "SELECT lead_source_pk AS source_pk FROM new_rows",
             "DELETE": "SELECT lead_source_pk AS source_pk FROM old_rows",
             "UPDATE": f"SELECT m.lead_source_pk AS source_pk FROM ({_moved('lead_source_pk, milestone')}) m"},
            f"SELECT DISTINCT c.source_pk FROM c WHERE {_HAS_ROW_OR_LINK}",
        ),
    ),
    (
        # TRUNCATE of the trips or the claims: every row loses those figures
        "lead_window_14d_on_truncate_figures", "", "RETURNS trigger LANGUAGE plpgsql",
        f"""
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('{LOCK}'));
    IF TG_TABLE_NAME = 'driver_trips' THEN
        UPDATE {TABLE} SET trips_14d = 0 WHERE trips_14d <> 0;
    ELSE
        UPDATE {TABLE} SET claimed_milestones = '{{}}' WHERE claimed_milestones <> '{{}}';
    END IF;
    RETURN NULL;
END
""",
    ),
    (
        # TRUNCATE of the leads or of the links: no lead has a link any more (or no lead at all)
        "lead_window_14d_on_truncate", "", "RETURNS trigger LANGUAGE plpgsql",
        f"""
BEGIN
    TRUNCATE {TABLE};
    RETURN NULL;
END
""",
    ),
]


def functions_sql() -> str:
    """CREATE OR REPLACE of every function, generated from this module and settings.

    Migration recovery 0005 installs them with the table and its triggers; after every migrate,
    lead_window_sync installs them again when this module (or CLAIM_WINDOW_DAYS) changed them.
    """
    return "\n".join(
        f"CREATE OR REPLACE FUNCTION ops.{name}({arguments}) {declaration} AS $fn${body}$fn$;"
        for name, arguments, declaration, body in FUNCTIONS
    )


def lead_window_rebuild(*, dry_run: bool = False, using: str = DEFAULT_DB_ALIAS) -> dict:
    """Recompute the whole table from DIRECT_SQL (the repair when the guardrail finds it out of step).

    Returns the rows that differed before and the rows the table holds; with dry_run, writes nothing.
    """
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM ({DIFFERENCES_SQL}) d")
        differing = cursor.fetchone()[0]
        if not dry_run:
            cursor.execute("SELECT ops.lead_window_14d_rebuild()")
        cursor.execute(f"SELECT count(*) FROM {TABLE}")
        return {"differing": differing, "rows": cursor.fetchone()[0], "dry_run": dry_run}


def lead_window_sync(*, using: str = DEFAULT_DB_ALIAS) -> bool:
    """After migrate: when the installed functions differ from this module's (a changed definition or
    CLAIM_WINDOW_DAYS), replace them and rebuild the table. Returns whether it did."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE])
        if not cursor.fetchone()[0]:
            return False  # migrated backwards past recovery 0005
        cursor.execute(
            "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'ops' AND p.proname = ANY(%s)",
            [[name for name, *_ in FUNCTIONS]],
        )
        installed = dict(cursor.fetchall())
    if all(installed.get(name) == body for name, _, _, body in FUNCTIONS):
        return False
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(functions_sql())
    lead_window_rebuild(using=using)
    return True
